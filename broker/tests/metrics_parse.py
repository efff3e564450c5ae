"""Parse the broker's metrics as Prometheus does (broker/tests/metrics.rs): the OpenMetrics
text on stdin through prometheus_client's own parser; prints every sample as JSON.
A text the parser refuses raises (non-zero exit)."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
