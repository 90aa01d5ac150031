// The Grafana dashboard (kube-prometheus: `grafanaDashboards`), written out as
// deploy/grafana/upload-tasks.json by scripts/mixin.py. Plain jsonnet, no grafonnet: the
// mixin has no dependencies.
local duration = import 'lib/duration.libsonnet';

{
  local c = self._config,
  local ds = { type: 'prometheus', uid: '${datasource}' },

  // Label matchers of the dashboard's variables: every query carries them.
  local exporter = '%s=~"$cluster", job=~"$job", instance=~"$instance"' % c.clusterLabel,
  local store = exporter + ', store=~"$store"',
  local task = store + ', task_id=~"$task_id"',
  local stuckSeconds = duration.seconds(c.stuckThreshold),
  local staleSeconds = duration.seconds(c.staleAfter),
  // The stuck condition of ShoplazzaUploadTaskStuck, with the dashboard's matchers.
  local stuck = '(time() - shoplazza_upload_task_last_progress_timestamp_seconds{%(t)s}) > %(s)d and on (store, task_id) shoplazza_upload_task_status{%(t)s} == 1 and on (store, task_id) shoplazza_upload_task_poll_success{%(t)s} == 1' % { t: task, s: stuckSeconds },

  local target(expr, ref='A', legend='__auto', instant=false, format='time_series') = {
    refId: ref,
    datasource: ds,
    expr: expr,
    legendFormat: legend,
    range: !instant,
    instant: instant,
    format: format,
    editorMode: 'code',
  },
  local mapping(options) = {
    type: 'value',
    options: {
      [o[0]]: { text: o[1], color: o[2], index: i }
      for i in std.range(0, std.length(options) - 1)
      for o in [options[i]]
    },
  },
  local thresholds(steps) = {
    mode: 'absolute',
    steps: [{ color: s[0], value: s[1] } for s in steps],
  },
  local row(id, title, y) = {
    type: 'row',
    title: title,
    id: id,
    collapsed: false,
    gridPos: { h: 1, w: 24, x: 0, y: y },
    panels: [],
  },
  local stat(id, title, description, x, expr, steps, mappings=[]) = {
    type: 'stat',
    title: title,
    description: description,
    id: id,
    datasource: ds,
    gridPos: { h: 4, w: 3, x: x, y: 1 },
    fieldConfig: {
      defaults: {
        unit: 'none',
        decimals: 0,
        color: { mode: 'thresholds' },
        thresholds: thresholds(steps),
        mappings: mappings,
      },
      overrides: [],
    },
    options: {
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
      colorMode: 'background',
      graphMode: 'none',
      justifyMode: 'auto',
      orientation: 'auto',
      textMode: 'value',
      wideLayout: true,
      showPercentChange: false,
    },
    targets: [target(expr, instant=true)],
  },
  // A count of tasks for a stat: 0, not "no data", when there are none.
  local count(expr) = 'count(%s) or vector(0)' % expr,
  local timeseries(id, title, description, pos, unit, targets, stacking='none', defaults={}) = {
    type: 'timeseries',
    title: title,
    description: description,
    id: id,
    datasource: ds,
    gridPos: { h: 8, w: 12, x: pos[0], y: pos[1] },
    fieldConfig: {
      defaults: {
        unit: unit,
        custom: {
          drawStyle: 'line',
          lineWidth: 1,
          fillOpacity: 10,
          showPoints: 'never',
          spanNulls: false,
          lineInterpolation: 'linear',
          stacking: { mode: stacking, group: 'A' },
          axisSoftMin: 0,
        },
        color: { mode: 'palette-classic' },
      } + defaults,
      overrides: [],
    },
    options: {
      legend: { displayMode: 'table', placement: 'right', showLegend: true, calcs: ['lastNotNull'] },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
    targets: targets,
  },
  local override(column, properties) = {
    matcher: { id: 'byName', options: column },
    properties: [{ id: p.key, value: p.value } for p in properties],
  },
  local kv(key, value) = { key: key, value: value },
  local colorText = kv('custom.cellOptions', { type: 'color-text' }),

  // A query variable over one label, multi-select with "All".
  local queryVariable(name, label, query, hide=0) = {
    type: 'query',
    name: name,
    label: label,
    datasource: ds,
    definition: query,
    query: query,
    refresh: 2,
    regex: '',
    sort: 1,
    multi: true,
    includeAll: true,
    allValue: '.*',
    current: { selected: true, text: ['All'], value: ['$__all'] },
    options: [],
    hide: hide,
    skipUrlSync: false,
  },

  grafanaDashboards+:: {
    'upload-tasks.json': {
      uid: c.dashboardUid,
      title: c.dashboardTitle,
      description: 'Shoplazza upload-file tasks watched by shoplazza-upload-exporter.',
      tags: c.dashboardTags,
      timezone: 'browser',
      editable: true,
      graphTooltip: 1,
      fiscalYearStartMonth: 0,
      liveNow: false,
      schemaVersion: 39,
      version: 3,
      refresh: c.dashboardRefresh,
      time: { from: 'now-6h', to: 'now' },
      timepicker: {},
      links: [],
      annotations: {
        list: [{
          builtIn: 1,
          datasource: { type: 'grafana', uid: '-- Grafana --' },
          enable: true,
          hide: true,
          iconColor: 'rgba(0, 211, 255, 1)',
          name: 'Annotations & Alerts',
          type: 'dashboard',
        }],
      },
      templating: {
        list: [
          {
            type: 'datasource',
            name: 'datasource',
            label: 'Data source',
            query: 'prometheus',
            // Empty: Grafana takes the default Prometheus. lib/importable.libsonnet fills
            // it from __inputs for the file users import (deploy/grafana/*.json).
            current: {},
            hide: 0,
            includeAll: false,
            multi: false,
            options: [],
            refresh: 1,
            regex: '',
            skipUrlSync: false,
          },
          // Hidden unless series carry the cluster label (then it shows a choice).
          queryVariable(
            'cluster', 'Cluster',
            'label_values(shoplazza_exporter_shard_info{%s}, %s)' % [c.exporterSelector, c.clusterLabel],
            hide=2,
          ),
          queryVariable(
            'job', 'Job',
            'label_values(shoplazza_exporter_shard_info{%s=~"$cluster", %s}, job)' % [c.clusterLabel, c.exporterSelector],
          ),
          queryVariable(
            'instance', 'Instance',
            'label_values(shoplazza_exporter_shard_info{%s=~"$cluster", job=~"$job"}, instance)' % c.clusterLabel,
          ),
          queryVariable(
            'store', 'Store',
            'label_values(shoplazza_upload_task_poll_success{%s}, store)' % exporter,
          ),
          queryVariable(
            'task_id', 'Task',
            'label_values(shoplazza_upload_task_poll_success{%s}, task_id)' % store,
          ),
          {
            // Where a person's browser reaches the exporter's pages (its
            // --web.external-url): the Tasks table links each task to its page there.
            type: 'textbox',
            name: 'exporter_url',
            label: 'Exporter URL',
            query: c.exporterUrl,
            current: { selected: false, text: c.exporterUrl, value: c.exporterUrl },
            options: [{ selected: true, text: c.exporterUrl, value: c.exporterUrl }],
            hide: 0,
            skipUrlSync: false,
          },
        ],
      },
      panels: [
        row(1, 'Tasks', 0),
        stat(2, 'In progress', 'Tasks whose last known status is 1 (in progress).', 0,
             count('shoplazza_upload_task_status{%s} == 1' % task), [['blue', null]]),
        stat(4, 'Stuck', 'In progress (status 1), polls working, no progress for %s: the ShoplazzaUploadTaskStuck alert and the status page\'s stuck state.' % duration.words(c.stuckThreshold), 3,
             count(stuck), [['green', null], ['orange', 1]]),
        stat(6, 'Failing polls', 'Tasks whose last poll failed, or that have not been polled successfully yet (poll_success 0). Completed tasks are never polled again and keep 1.', 6,
             count('shoplazza_upload_task_poll_success{%s} == 0' % task), [['green', null], ['red', 1]]),
        stat(22, 'Stale data', 'Tasks not completed whose last successful poll is over %s old. Completed tasks are never polled again and are left out.' % duration.words(c.staleAfter), 9,
             count('time() - shoplazza_upload_task_last_success_timestamp_seconds{%(t)s} > %(s)d and on (store, task_id) shoplazza_upload_task_completed{%(t)s} == 0' % { t: task, s: staleSeconds }),
             [['green', null], ['red', 1]]),
        stat(5, 'With failed files', 'Tasks with at least one failed file, completed or not.', 12,
             count('shoplazza_upload_task_files_failed{%s} > 0' % task), [['green', null], ['red', 1]]),
        stat(23, 'Unknown status', 'Tasks whose status is neither 0 (completed) nor 1 (in progress).', 15,
             count('shoplazza_upload_task_status{%s} > 1' % task), [['green', null], ['orange', 1]]),
        stat(3, 'Completed', 'Tasks whose last known status is 0 (completed).', 18,
             count('shoplazza_upload_task_completed{%s} == 1' % task), [['green', null]]),
        stat(7, 'Last config reload', "Whether the exporter's last configuration reload succeeded (exporter-wide, no store label; the worst of the selected instances).", 21,
             'min(shoplazza_exporter_config_last_reload_successful{%s})' % exporter,
             [['red', null], ['green', 1]], [mapping([['0', 'failed', 'red'], ['1', 'ok', 'green']])]),
        {
          type: 'bargauge',
          title: 'Progress per task',
          id: 8,
          datasource: ds,
          description: 'finished / total of each task (1 = all files processed).',
          gridPos: { h: 10, w: 24, x: 0, y: 5 },
          fieldConfig: {
            defaults: {
              unit: 'percentunit',
              min: 0,
              max: 1,
              decimals: 1,
              color: { mode: 'continuous-RdYlGr' },
              thresholds: thresholds([['green', null]]),
            },
            overrides: [],
          },
          options: {
            displayMode: 'gradient',
            orientation: 'horizontal',
            showUnfilled: true,
            valueMode: 'color',
            namePlacement: 'auto',
            sizing: 'auto',
            minVizHeight: 16,
            minVizWidth: 8,
            maxVizHeight: 300,
            reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
          },
          targets: [target('shoplazza_upload_task_progress_ratio{%s}' % task, legend='{{store}} / {{task_id}}', instant=true)],
        },
        {
          type: 'table',
          title: 'Tasks',
          id: 9,
          datasource: ds,
          description: "One row per task: its state (as on the exporter's status page; a task never polled successfully shows as failing polls), its context labels from shoplazza_upload_task_info, the last known counts, and for tasks in progress the exporter's estimated time to completion (from the task's recent progress; negative: overdue). A task's id links to its page on the exporter (the exporter_url variable).",
          gridPos: { h: 10, w: 24, x: 0, y: 15 },
          // State codes: the mappings of the State column below.
          local state = std.join(' or ', [
            '(shoplazza_upload_task_poll_success{%(t)s} == 0) * 0 + 5',
            '(shoplazza_upload_task_status{%(t)s} == 0 and on (store, task_id) shoplazza_upload_task_files_failed{%(t)s} > 0) * 0 + 4',
            '(shoplazza_upload_task_status{%(t)s} == 0) * 0 + 3',
            '(shoplazza_upload_task_status{%(t)s} > 1) * 0 + 6',
            '(%(stuck)s) * 0 + 2',
            '(shoplazza_upload_task_status{%(t)s} == 1) * 0 + 1',
          ]) % { t: task, stuck: stuck },
          local table(ref, expr) = target(expr, ref, instant=true, format='table'),
          targets: [
            table('S', state),
            table('L', 'shoplazza_upload_task_info{%s}' % task),
            table('A', 'shoplazza_upload_task_files{%s}' % task),
            table('B', 'shoplazza_upload_task_files_finished{%s}' % task),
            table('C', 'shoplazza_upload_task_files_succeeded{%s}' % task),
            table('D', 'shoplazza_upload_task_files_failed{%s}' % task),
            table('E', 'shoplazza_upload_task_status{%s}' % task),
            table('K', 'shoplazza_upload_task_completed{%s}' % task),
            table('F', 'shoplazza_upload_task_poll_success{%s}' % task),
            // The exporter's own estimate (absent when it has none: completed, not
            // progressing, too little data); negative once the task is past it.
            table('T', '(shoplazza_upload_task_estimated_completion_timestamp_seconds{%(t)s} - time()) and on (store, task_id) shoplazza_upload_task_status{%(t)s} == 1' % { t: task }),
          ],
          transformations: [
            { id: 'merge', options: {} },
            {
              id: 'organize',
              options: {
                excludeByName: {
                  Time: true,
                  __name__: true,
                  job: true,
                  instance: true,
                  'Value #L': true,
                },
                indexByName: { store: 0, task_id: 1, 'Value #S': 2 },
                renameByName: {
                  'Value #S': 'State',
                  'Value #A': 'Files',
                  'Value #B': 'Finished',
                  'Value #C': 'Succeeded',
                  'Value #D': 'Failed',
                  'Value #E': 'Status',
                  'Value #K': 'Completed',
                  'Value #F': 'Last poll',
                  'Value #T': 'Time to completion',
                },
              },
            },
          ],
          fieldConfig: {
            defaults: { custom: { align: 'auto', cellOptions: { type: 'auto' } } },
            overrides: [
              // Each task links to its page on the exporter (GET /tasks/{store}/{task_id}):
              // the base is raw (a URL), the labels percent-encoded.
              override('task_id', [kv('links', [{
                title: 'Task ${__data.fields.task_id} on the exporter',
                url: '${exporter_url:raw}/tasks/${__data.fields.store:percentencode}/${__data.fields.task_id:percentencode}',
                targetBlank: true,
              }])]),
              override('State', [
                kv('mappings', [mapping([
                  ['1', 'in progress', 'blue'],
                  ['2', 'stuck', 'orange'],
                  ['3', 'completed', 'green'],
                  ['4', 'completed with failures', 'purple'],
                  ['5', 'failing polls / not polled yet', 'red'],
                  ['6', 'unknown status', 'brown'],
                ])]),
                kv('custom.cellOptions', { type: 'color-background', mode: 'basic' }),
              ]),
              override('Status', [
                kv('mappings', [
                  mapping([['0', '0 completed', 'green'], ['1', '1 in progress', 'blue']]),
                  {
                    type: 'range',
                    options: { from: 2, to: null, result: { text: 'unknown status', color: 'brown', index: 2 } },
                  },
                ]),
                colorText,
              ]),
              override('Completed', [
                kv('mappings', [mapping([['0', 'no', 'text'], ['1', 'yes', 'green']])]),
                colorText,
              ]),
              override('Last poll', [
                kv('mappings', [mapping([['0', 'failing', 'red'], ['1', 'ok', 'green']])]),
                colorText,
              ]),
              override('Failed', [kv('thresholds', thresholds([['text', null], ['red', 1]])), colorText]),
              override('Time to completion', [kv('unit', 's'), kv('decimals', 0)]),
            ],
          },
          options: {
            showHeader: true,
            cellHeight: 'sm',
            footer: { show: false, reducer: ['sum'], fields: '' },
            sortBy: [{ displayName: 'State', desc: true }],
          },
        },
        timeseries(10, 'Progress over time', 'finished / total of each task over time.', [0, 25], 'percentunit',
                   [target('shoplazza_upload_task_progress_ratio{%s}' % task, legend='{{store}} / {{task_id}}')],
                   defaults={ min: 0, max: 1 }),
        timeseries(11, 'Failed files', "Length of each task's failure_list over time.", [12, 25], 'short',
                   [target('shoplazza_upload_task_files_failed{%s}' % task, legend='{{store}} / {{task_id}}')],
                   defaults={ decimals: 0 }),
        row(12, 'Shoplazza API', 33),
        timeseries(13, 'API requests by code', 'Requests to the Shoplazza API per second, by HTTP status or error class.', [0, 34], 'reqps',
                   [target('sum by (store, code) (rate(shoplazza_api_requests_total{%s}[$__rate_interval]))' % store, legend='{{store}} {{code}}')],
                   stacking='normal'),
        timeseries(14, 'API error ratio', 'Share of requests that did not yield valid task data (ShoplazzaApiErrorRatioHigh fires above %s for 10 minutes).' % ('%g%%' % (100 * c.apiErrorRatio)), [12, 34], 'percentunit',
                   [target('sum by (store) (rate(shoplazza_api_errors_total{%(s)s}[$__rate_interval])) / (sum by (store) (rate(shoplazza_api_requests_total{%(s)s}[$__rate_interval])) > 0)' % { s: store }, legend='{{store}}')],
                   defaults={ min: 0, max: 1 }),
        timeseries(15, '429 Too Many Requests', 'Rate-limited requests per second; the exporter pauses the store for Retry-After.', [0, 42], 'reqps',
                   [target('sum by (store) (rate(shoplazza_api_errors_total{%s, code="429"}[$__rate_interval]))' % store, legend='{{store}}')]),
        timeseries(16, 'API request duration', 'Median and 99th percentile of Shoplazza API request durations.', [12, 42], 's', [
          target('histogram_quantile(0.5, sum by (store, le) (rate(shoplazza_api_request_duration_seconds_bucket{%s}[$__rate_interval])))' % store, legend='{{store}} p50'),
          target('histogram_quantile(0.99, sum by (store, le) (rate(shoplazza_api_request_duration_seconds_bucket{%s}[$__rate_interval])))' % store, 'B', legend='{{store}} p99'),
        ]),
        row(17, 'Exporter', 50),
        timeseries(18, 'Poll success', '1 if the last poll of the task succeeded, else 0.', [0, 51], 'bool_yes_no',
                   [target('shoplazza_upload_task_poll_success{%s}' % task, legend='{{store}} / {{task_id}}')],
                   defaults={ min: 0, max: 1, mappings: [mapping([['0', 'failing', 'red'], ['1', 'ok', 'green']])] }),
        timeseries(19, 'Data age', 'Time since the last successful poll of each task not completed. Completed tasks are never polled again, so they are left out rather than shown ageing.', [12, 51], 's',
                   [target('time() - shoplazza_upload_task_last_success_timestamp_seconds{%(t)s} and on (store, task_id) shoplazza_upload_task_completed{%(t)s} == 0' % { t: task }, legend='{{store}} / {{task_id}}')],
                   defaults={ thresholds: thresholds([['green', null], ['red', staleSeconds]]) }) + {
          fieldConfig+: { defaults+: { custom+: { thresholdsStyle: { mode: 'line' } } } },
        },
        timeseries(20, 'Polls skipped', 'Due tasks a scrape answered from memory: rate_limited (client budget), backoff (after a 429), deadline (scrape timeout).', [0, 59], 'ops',
                   [target('sum by (store, reason) (rate(shoplazza_exporter_polls_skipped_total{%s}[$__rate_interval]))' % store, legend='{{store}} {{reason}}')],
                   stacking='normal'),
        timeseries(21, 'Watched tasks', 'Tasks the exporter watches, per store.', [12, 59], 'short',
                   [target('sum by (store) (shoplazza_exporter_watched_tasks{%s})' % store, legend='{{store}}')],
                   defaults={ decimals: 0 }),
      ],
    },
  },
}
