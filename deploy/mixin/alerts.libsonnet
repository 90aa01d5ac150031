// The alerting rules (kube-prometheus: `prometheusAlerts`). Each rule's `notes::` explain
// why it is written the way it is; scripts/mixin.py writes them as comments into
// deploy/prometheus/alerts.yml.
//
// Every alert is true in every task state (docs/runbook.md, README "Task states"):
// completed tasks are never polled again, so nothing here alerts on their age; a task
// whose polls fail is ShoplazzaUploadTaskStale, not also stuck; forgotten tasks have no
// series, so nothing fires.
local duration = import 'lib/duration.libsonnet';

{
  local c = self._config,
  local sel = c.exporterSelector,
  local ratio(x) = '%g' % x,
  local percent(x) = '%g%%' % (100 * x),

  // runbook_url and dashboard_url of an alert; `vars` are the dashboard variables its
  // labels fill (the link opens the dashboard on the alert's store, task or instance).
  local links(name, vars) = {
    runbook_url: '%s#%s' % [c.runbookBaseUrl, std.asciiLower(name)],
    dashboard_url: c.dashboardUrl + (
      if vars == [] then ''
      else '?' + std.join('&', [
        'var-%s={{ $labels.%s | urlquery }}' % [v, v]
        for v in vars
      ])
    ),
  },
  local taskLinks(name) = links(name, ['store', 'task_id']),
  local storeLinks(name) = links(name, ['store']),
  local instanceLinks(name) = links(name, ['instance']),

  prometheusAlerts+:: {
    groups+: [
      {
        name: 'shoplazza-upload-tasks',
        rules: [
          {
            alert: 'ShoplazzaUploadTaskStuck',
            notes:: |||
              A task in progress (status 1) whose `finished` count and status have not changed
              for %(words)s, while its polls succeed (with failing polls the exporter cannot
              see progress: that is ShoplazzaUploadTaskStale). Completed tasks and unknown
              statuses are left out (ShoplazzaUploadTaskUnknownStatus covers the latter).
              THRESHOLD: _config.stuckThreshold of the mixin (keep the stores' `stuck_after`,
              default 15m, equal; the dashboard's stuck panels follow the mixin).
            ||| % { words: duration.words(c.stuckThreshold) },
            expr: |||
              (time() - shoplazza_upload_task_last_progress_timestamp_seconds{%(sel)s}) > %(seconds)d
              and on (store, task_id)
              shoplazza_upload_task_status{%(sel)s} == 1
              and on (store, task_id)
              shoplazza_upload_task_poll_success{%(sel)s} == 1
            ||| % { sel: sel, seconds: duration.seconds(c.stuckThreshold) },
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} is stuck',
              description: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} is in progress but has made no progress for {{ $value | humanizeDuration }}.',
            } + taskLinks(self.alert),
          },
          {
            alert: 'ShoplazzaUploadTaskBehindSchedule',
            notes:: |||
              A task in progress whose polls work, still moving (progress within the last
              %(stuck)s, else it is ShoplazzaUploadTaskStuck), that is more than %(margin)s
              past the completion the exporter estimated %(offset)s ago (its estimate now may
              have moved on with the slower rate), for %(for)s. Tasks without an estimate
              (completed, not progressing, too little data) have no estimate series: never.
              MARGIN: _config.behindScheduleMargin, behindScheduleOffset and
              behindScheduleFor of the mixin; bench/completion.py saw estimates off by about
              1 minute at p95 and at most about 10 minutes, for a task that paused mid-way
              (docs/performance.md, "Completion seen: predictive polling"), so a task that is
              merely a little late never fires. The "still moving" part is the complement of
              ShoplazzaUploadTaskStuck (_config.stuckThreshold).
            ||| % {
              stuck: duration.words(c.stuckThreshold),
              margin: duration.words(c.behindScheduleMargin),
              offset: duration.words(c.behindScheduleOffset),
              'for': duration.words(c.behindScheduleFor),
            },
            expr: |||
              (
                time() - (shoplazza_upload_task_estimated_completion_timestamp_seconds{%(sel)s} offset %(offset)s)
              ) > %(margin)d
              and on (store, task_id)
              shoplazza_upload_task_status{%(sel)s} == 1
              and on (store, task_id)
              (time() - shoplazza_upload_task_last_progress_timestamp_seconds{%(sel)s}) < %(stuck)d
              and on (store, task_id)
              shoplazza_upload_task_poll_success{%(sel)s} == 1
            ||| % {
              sel: sel,
              offset: c.behindScheduleOffset,
              margin: duration.seconds(c.behindScheduleMargin),
              stuck: duration.seconds(c.stuckThreshold),
            },
            'for': c.behindScheduleFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} is behind schedule',
              description: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} is still in progress {{ $value | humanizeDuration }} after the completion estimated %s ago, and still moving slowly.' % duration.words(c.behindScheduleOffset),
            } + taskLinks(self.alert),
          },
          {
            alert: 'ShoplazzaUploadTaskFailedFiles',
            notes:: |||
              New failed files: more than %(window)s ago (or before the task's series began).
              It fires 5 minutes after files fail and resolves %(window)s after the last new
              failure, so a task that completed with failures does not page for a day.
            ||| % { window: duration.words(c.failedFilesWindow) },
            expr: |||
              shoplazza_upload_task_files_failed{%(sel)s}
              - (
                shoplazza_upload_task_files_failed{%(sel)s} offset %(window)s
                or
                shoplazza_upload_task_files_failed{%(sel)s} * 0
              )
              > 0
            ||| % { sel: sel, window: c.failedFilesWindow },
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} has new failed files',
              description: '{{ $value }} more file(s) of upload task {{ $labels.task_id }} of store {{ $labels.store }} failed to upload in the last %s.' % duration.words(c.failedFilesWindow),
            } + taskLinks(self.alert),
          },
          {
            alert: 'ShoplazzaUploadTaskFailureRatioHigh',
            notes:: |||
              A task in progress of which more than %(percent)s of the finished files failed.
              Completed tasks are left out: ShoplazzaUploadTaskFailedFiles told about them.
            ||| % { percent: percent(c.taskFailureRatio) },
            expr: |||
              shoplazza_upload_task_files_failed{%(sel)s}
              / (shoplazza_upload_task_files_finished{%(sel)s} > 0)
              > %(ratio)s
              and on (store, task_id)
              shoplazza_upload_task_completed{%(sel)s} == 0
            ||| % { sel: sel, ratio: ratio(c.taskFailureRatio) },
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} fails many files',
              description: '{{ $value | humanizePercentage }} of the finished files of upload task {{ $labels.task_id }} of store {{ $labels.store }} failed, and it is still in progress.',
            } + taskLinks(self.alert),
          },
          {
            alert: 'ShoplazzaUploadTaskStale',
            notes:: |||
              The last poll of the task failed, or none succeeded yet, and that has lasted
              %(words)s: the task's other metrics show the last known data only. Completed
              tasks are never polled again and keep poll_success 1: they never fire.
            ||| % { words: duration.words(c.staleAfter) },
            expr: 'shoplazza_upload_task_poll_success{%s} == 0' % sel,
            'for': c.staleAfter,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} cannot be polled',
              description: 'Polls of upload task {{ $labels.task_id }} of store {{ $labels.store }} have failed for at least %s; its metrics show the last known data, if any.' % duration.words(c.staleAfter),
            } + taskLinks(self.alert),
          },
          {
            alert: 'ShoplazzaUploadTaskUnknownStatus',
            notes:: 'Shoplazza documents status 0 (completed) and 1 (in progress) only.',
            expr: 'shoplazza_upload_task_status{%s} > 1' % sel,
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Upload task {{ $labels.task_id }} of store {{ $labels.store }} has an unknown status',
              description: 'Shoplazza reports status {{ $value }} for upload task {{ $labels.task_id }} of store {{ $labels.store }}; only 0 (completed) and 1 (in progress) are known.',
            } + taskLinks(self.alert),
          },
        ],
      },
      {
        name: 'shoplazza-api',
        rules: [
          {
            alert: 'ShoplazzaApiErrorRatioHigh',
            notes:: |||
              Share of API requests of a store that did not yield valid task data.
              The `> 0` on the denominator drops stores without requests (no division by 0).
            |||,
            expr: |||
              sum by (store) (rate(shoplazza_api_errors_total{%(sel)s}[5m]))
              /
              (sum by (store) (rate(shoplazza_api_requests_total{%(sel)s}[5m])) > 0)
              > %(ratio)s
            ||| % { sel: sel, ratio: ratio(c.apiErrorRatio) },
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Shoplazza API errors for store {{ $labels.store }} are high',
              description: '{{ $value | humanizePercentage }} of the Shoplazza API requests for store {{ $labels.store }} failed over the last 5 minutes.',
            } + storeLinks(self.alert),
          },
          {
            alert: 'ShoplazzaApiRateLimited',
            notes:: 'Any 429 answer for a store in the last 10 minutes (information only).',
            expr: 'sum by (store) (increase(shoplazza_api_errors_total{%s, code="429"}[10m])) > 0' % sel,
            labels: { severity: 'info' },
            annotations: {
              summary: 'Shoplazza API rate-limits store {{ $labels.store }}',
              description: 'Shoplazza answered about {{ $value | humanize }} request(s) for store {{ $labels.store }} with 429 Too Many Requests in the last 10 minutes.',
            } + storeLinks(self.alert),
          },
        ],
      },
      {
        name: 'shoplazza-upload-exporter',
        rules: [
          {
            alert: 'ShoplazzaExporterConfigReloadFailed',
            notes:: 'The process keeps running with its previous configuration.',
            expr: 'shoplazza_exporter_config_last_reload_successful{%s} == 0' % sel,
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'shoplazza-upload-exporter {{ $labels.instance }} failed to reload its configuration',
              description: 'The last configuration reload of shoplazza-upload-exporter {{ $labels.instance }} failed; it keeps running with the previous configuration.',
            } + instanceLinks(self.alert),
          },
          {
            alert: 'ShoplazzaExporterDown',
            notes:: |||
              The `job` label of `up` is the job_name of YOUR scrape config (with the
              Prometheus Operator: the Service name). _config.exporterSelector of the mixin
              selects it (default: job names starting with "shoplazza-upload-exporter").
            |||,
            expr: 'up{%s} == 0' % sel,
            'for': '5m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'shoplazza-upload-exporter {{ $labels.instance }} is down',
              description: 'Prometheus has failed to scrape shoplazza-upload-exporter {{ $labels.instance }} (job {{ $labels.job }}) for 5 minutes; upload tasks are not monitored.',
            } + instanceLinks(self.alert),
          },
          {
            alert: 'ShoplazzaExporterAbsent',
            notes:: |||
              No target of the job at all (removed from service discovery, ServiceMonitor not
              selected, job renamed): `up == 0` cannot see that. Same selector as above.
            |||,
            expr: 'absent(up{%s})' % sel,
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'No shoplazza-upload-exporter target is scraped',
              description: 'Prometheus has had no target matching %s for 10 minutes; upload tasks are not monitored.' % sel,
            } + links(self.alert, []),
          },
        ],
      },
      {
        name: 'shoplazza-upload-exporter-shards',
        rules: [
          {
            alert: 'ShoplazzaExporterShardsMissing',
            notes:: |||
              Fewer shards report than their --total-shards says (a shard not running, or
              down): the stores of the missing shards are not watched. Every process exports
              shoplazza_exporter_shard_info{shard, total_shards}; the distinct shards of a
              deployment are counted and the count is made a label (count_values), which
              must equal the total_shards label. Holds with one process too (1 of 1).
            |||,
            expr: |||
              count_values by (%(group)s, total_shards) ("running_shards",
                count by (%(group)s, total_shards) (
                  count by (%(group)s, total_shards, shard) (shoplazza_exporter_shard_info{%(sel)s})
                )
              )
              unless on (%(group)s, total_shards, running_shards)
              label_replace(
                count_values by (%(group)s, total_shards) ("running_shards",
                  count by (%(group)s, total_shards) (
                    count by (%(group)s, total_shards, shard) (shoplazza_exporter_shard_info{%(sel)s})
                  )
                ),
                "running_shards", "$1", "total_shards", "(.*)"
              )
            ||| % { sel: sel, group: c.shardingGroupLabels },
            'for': c.shardingFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Only {{ $labels.running_shards }} of {{ $labels.total_shards }} shards of shoplazza-upload-exporter report',
              description: 'For %s only {{ $labels.running_shards }} distinct shards of {{ $labels.job }} have reported, though they run with --total-shards {{ $labels.total_shards }}; the stores of the missing shards are not watched.' % duration.words(c.shardingFor),
            } + links(self.alert, []),
          },
          {
            alert: 'ShoplazzaExporterShardingMismatch',
            notes:: |||
              The shards of one deployment disagree on --total-shards: then some stores
              belong to no running shard and others to two. Expected for a moment during a
              rollout that changes the number of shards, hence the `for`.
            |||,
            expr: |||
              count by (%(group)s) (
                count by (%(group)s, total_shards) (shoplazza_exporter_shard_info{%(sel)s})
              ) > 1
            ||| % { sel: sel, group: c.shardingGroupLabels },
            'for': c.shardingFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Shards of shoplazza-upload-exporter disagree on their number',
              description: 'For %s the shards of {{ $labels.job }} have run with {{ $value }} different values of --total-shards; some stores are watched twice and others not at all.' % duration.words(c.shardingFor),
            } + links(self.alert, []),
          },
        ],
      },
    ],
  },
}
