// A dashboard of the mixin made ready for Grafana's "Import dashboard" (the form of
// deploy/grafana/*.json): __inputs asks for the Prometheus data source, which Grafana then
// writes wherever ${DS_PROMETHEUS} stands (the default of the `datasource` variable; the
// panels keep using that variable), and __requires names the Grafana version and plugins.
// Given to file provisioning as is, ${DS_PROMETHEUS} matches no data source and the
// variable falls back to the default Prometheus.
function(dashboard)
  local panelTypes = std.set([
    p.type
    for p in dashboard.panels
    if p.type != 'row'
  ]);
  local names = {
    bargauge: 'Bar gauge',
    stat: 'Stat',
    table: 'Table',
    timeseries: 'Time series',
  };
  {
    __inputs: [{
      name: 'DS_PROMETHEUS',
      label: 'Prometheus',
      description: 'The Prometheus that scrapes shoplazza-upload-exporter',
      type: 'datasource',
      pluginId: 'prometheus',
      pluginName: 'Prometheus',
    }],
    __requires: [
      { type: 'grafana', id: 'grafana', name: 'Grafana', version: '10.0.0' },
      { type: 'datasource', id: 'prometheus', name: 'Prometheus', version: '1.0.0' },
    ] + [
      { type: 'panel', id: t, name: names[t], version: '' }
      for t in panelTypes
    ],
  } + dashboard + {
    templating+: {
      list: [
        if v.type == 'datasource'
        then v { current: { selected: false, text: '${DS_PROMETHEUS}', value: '${DS_PROMETHEUS}' } }
        else v
        for v in super.list
      ],
    },
  }
