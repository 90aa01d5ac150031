// Everything a user of the mixin may want to change, in one place. Override it the way
// every monitoring mixin is overridden:
//
//   (import 'shoplazza-upload-exporter/mixin.libsonnet') + {
//     _config+:: {
//       exporterSelector: 'job="uploads"',
//       stuckThreshold: '30m',
//     },
//   }
//
// deploy/prometheus/alerts.yml, the PrometheusRules and deploy/grafana/*.json are this
// mixin rendered with these defaults (scripts/mixin.py; docs/mixin.md).
{
  _config+:: {
    // Selects the exporter's series in every alert and dashboard query. The `job` label is
    // the job_name of YOUR scrape config (with the Prometheus Operator: the Service name);
    // the default matches the example configurations (deploy/prometheus/prometheus.yml,
    // the Services of deploy/kubernetes*/).
    exporterSelector: 'job=~"shoplazza-upload-exporter.*"',

    // A task in progress whose polls work and that made no progress for this long is
    // stuck (keep it equal to the stores' `stuck_after`, default 15m, so the status page
    // and the alert agree).
    stuckThreshold: '15m',
    // ShoplazzaUploadTaskBehindSchedule: a task still moving that is more than
    // behindScheduleMargin past the completion the exporter estimated behindScheduleOffset
    // ago, for behindScheduleFor. bench/completion.py saw estimates off by at most about
    // 10 minutes (docs/performance.md, "Completion seen: predictive polling").
    behindScheduleMargin: '15m',
    behindScheduleOffset: '30m',
    behindScheduleFor: '10m',
    // New failed files are counted over this window (ShoplazzaUploadTaskFailedFiles).
    failedFilesWindow: '30m',
    // Share of the finished files of a task in progress that may fail.
    taskFailureRatio: 0.1,
    // Share of a store's API requests that may fail.
    apiErrorRatio: 0.1,
    // A task whose polls have failed this long is stale (alert and dashboard).
    staleAfter: '10m',
    // How long the shards of a job may disagree on their number, or lack one of them,
    // before an alert: longer than a rolling restart of every shard takes.
    shardingFor: '15m',
    // The labels that tell one sharded deployment from another; add your cluster label
    // (e.g. 'cluster, job') when one Prometheus sees several clusters.
    shardingGroupLabels: 'job',

    // Where docs/runbook.md is published: every alert's runbook_url is
    // <runbookBaseUrl>#<alert name in lower case>.
    runbookBaseUrl: 'https://git.example.com/your-org/shoplazza-upload-exporter/blob/main/docs/runbook.md',
    // Where the dashboard is, in YOUR Grafana: every alert's dashboard_url is this address
    // with the alert's store, task or instance as dashboard variables.
    dashboardUrl: 'https://grafana.example.com/d/%s' % self.dashboardUid,

    // The dashboard.
    dashboardUid: 'shoplazza-upload-tasks',
    dashboardTitle: 'Shoplazza upload tasks',
    dashboardTags: ['shoplazza', 'shoplazza-upload-exporter'],
    dashboardRefresh: '30s',
    // The label that tells clusters apart in the `cluster` variable (hidden when unused).
    clusterLabel: 'cluster',
    // The default of the dashboard's `exporter_url` variable: the address at which a
    // person's browser reaches the exporter's pages (its --web.external-url). The task
    // table links each task to <exporter_url>/tasks/<store>/<task_id>.
    exporterUrl: 'http://localhost:9877',
  },
}
