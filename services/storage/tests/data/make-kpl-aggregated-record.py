"""Writes kpl-aggregated-record.json: one Kinesis record in the KPL
aggregated-record format, made by AWS's own Python aggregator, so that
Alleycat's encoder and decoder are checked against an implementation they
share no code with.

    python3 -m venv /tmp/agg && /tmp/agg/bin/pip install aws_kinesis_agg==1.2.3 six
    /tmp/agg/bin/python make-kpl-aggregated-record.py > kpl-aggregated-record.json
"""
import base64
import json

import aws_kinesis_agg.aggregator as agg

aggregator = agg.RecordAggregator()
user_records = [
    ("17", b'{"racerId":17,"second":1}'),
    ("42", b'{"racerId":42,"second":1}'),
    ("17", b'{"racerId":17,"second":2}'),
    ("7", b""),
]
for partition_key, data in user_records:
    aggregator.add_user_record(partition_key, data)
partition_key, explicit_hash_key, data = aggregator.clear_and_get().get_contents()
print(json.dumps({
    "partition_key": partition_key,
    "explicit_hash_key": explicit_hash_key,
    "data_base64": base64.b64encode(data).decode(),
    "user_records": [{"partition_key": p, "data": d.decode()} for p, d in user_records],
}, indent=1))
