"""Waits for the local Kinesis and S3 servers, then makes sure the stream and
the buckets exist. Run by infra/local/up with the venv's Python (boto3 comes
with moto). Writes only to stderr; exits non-zero with a message on failure.

Inputs (environment): KINESIS_PORT, S3_PORT, STREAM, SHARDS, BUCKETS
(comma-separated), WAIT_SECS, KINESIS_PID, S3_PID, KINESIS_LOG, S3_LOG.
"""

import os
import sys
import time

import boto3
import botocore.exceptions
from botocore.config import Config


def log(msg):
    print(f"[infra/local/up] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    log(f"ERROR: {msg}")
    sys.exit(1)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def err_code(e):
    return e.response.get("Error", {}).get("Code", "")


KPORT = int(os.environ["KINESIS_PORT"])
SPORT = int(os.environ["S3_PORT"])
STREAM = os.environ["STREAM"]
SHARDS = int(os.environ.get("SHARDS", "2"))
BUCKETS = [b for b in os.environ["BUCKETS"].split(",") if b]
WAIT = float(os.environ.get("WAIT_SECS", "60"))
KPID = int(os.environ.get("KINESIS_PID", "0") or 0)
SPID = int(os.environ.get("S3_PID", "0") or 0)
DEADLINE = time.monotonic() + WAIT

# One attempt per call and short timeouts, so a hung server cannot stretch
# the bounded wait by more than a few seconds.
CFG = Config(
    retries={"total_max_attempts": 1},
    connect_timeout=1,
    read_timeout=3,
    s3={"addressing_style": "path"},
)
COMMON = dict(
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    config=CFG,
)
kinesis = boto3.client("kinesis", endpoint_url=f"http://127.0.0.1:{KPORT}", **COMMON)
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{SPORT}", **COMMON)


def wait_until(what, probe, pid, logfile):
    last = None
    while True:
        if pid and not alive(pid):
            fail(f"{what} server (pid {pid}) exited during start-up; see {logfile}")
        try:
            probe()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            last = e
        if time.monotonic() > DEADLINE:
            fail(f"{what} server did not answer within {WAIT:.0f}s (last error: {last}); see {logfile}")
        time.sleep(0.2)


wait_until("Kinesis", lambda: kinesis.list_streams(Limit=1), KPID, os.environ.get("KINESIS_LOG", "?"))
log(f"Kinesis server answers on 127.0.0.1:{KPORT}")
wait_until("S3", lambda: s3.list_buckets(), SPID, os.environ.get("S3_LOG", "?"))
log(f"S3 server answers on 127.0.0.1:{SPORT}")

# Stream: create if missing, then wait for ACTIVE (it may also be UPDATING
# after a test resharded it, or DELETING after a test removed it).
status = None
while True:
    try:
        status = kinesis.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["StreamStatus"]
    except botocore.exceptions.ClientError as e:
        if err_code(e) != "ResourceNotFoundException":
            fail(f"DescribeStreamSummary({STREAM}) failed: {e}")
        status = None
    if status == "ACTIVE":
        break
    if status is None:
        try:
            kinesis.create_stream(StreamName=STREAM, ShardCount=SHARDS)
            log(f"created stream {STREAM} with {SHARDS} shards")
        except botocore.exceptions.ClientError as e:
            if err_code(e) != "ResourceInUseException":
                fail(f"CreateStream({STREAM}) failed: {e}")
    if time.monotonic() > DEADLINE:
        fail(f"stream {STREAM} is not ACTIVE after {WAIT:.0f}s (status {status})")
    time.sleep(0.1)
summary = kinesis.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]
log(f"stream {STREAM} is ACTIVE with {summary.get('OpenShardCount', '?')} open shards")

for bucket in BUCKETS:
    try:
        s3.head_bucket(Bucket=bucket)
        log(f"bucket {bucket} exists")
        continue
    except botocore.exceptions.ClientError as e:
        if e.response["ResponseMetadata"]["HTTPStatusCode"] != 404:
            fail(f"HeadBucket({bucket}) failed: {e}")
    try:
        s3.create_bucket(Bucket=bucket)
        log(f"created bucket {bucket}")
    except botocore.exceptions.ClientError as e:
        if err_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            fail(f"CreateBucket({bucket}) failed: {e}")
