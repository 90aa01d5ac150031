// shoplazza-upload-exporter monitoring mixin: alerts and dashboard, in the format
// kube-prometheus and the other mixin tools import (docs/mixin.md).
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'dashboards.libsonnet')
