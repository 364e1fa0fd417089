"""CloudWatch's API on the gateway: GetMetricStatistics, GetMetricData, ListMetrics and metric
alarms over the per-minute figures the gateway keeps, in CloudWatch's three wire protocols
(docs/sagemaker-api.md, section 7). Imports only common and metrics; only the face imports it."""
