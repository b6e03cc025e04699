//! The AWS deployment, `infra/aws/alleycat.yaml`, read as data: what the
//! public may read, what each service's role may do (checked against the
//! keys the code really uses), which commands the tasks run, which paths
//! the load balancer routes, and what the alarms watch. (`cfn-lint`, run by
//! `./scripts/test` through `infra/aws/lint`, checks it against
//! CloudFormation's schemas.)

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const SERVICES: [&str; 4] = ["ingest", "transformer", "history", "rankings"];

/// The template, with CloudFormation's short tags in their long form
/// (`!Ref X` as `{"Ref": "X"}`, `!GetAtt B.Arn` as
/// `{"Fn::GetAtt": ["B", "Arn"]}`, `!Sub s` as `{"Fn::Sub": s}`, ...).
fn template() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/aws/alleycat.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    long_form(yaml)
}

fn long_form(yaml: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(&n).unwrap(),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(long_form).collect()),
        Y::Mapping(mapping) => Value::Object(
            mapping
                .into_iter()
                .map(|(k, v)| {
                    let Value::String(key) = long_form(k) else {
                        panic!("a mapping key that is not a string")
                    };
                    (key, long_form(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let value = long_form(tagged.value);
            match (name, value) {
                ("Ref" | "Condition", value) => json!({ name: value }),
                ("GetAtt", Value::String(dotted)) => {
                    let (resource, attribute) = dotted.split_once('.').unwrap();
                    json!({ "Fn::GetAtt": [resource, attribute] })
                }
                (name, value) => json!({ format!("Fn::{name}"): value }),
            }
        }
    }
}

fn resources(template: &Value) -> &Map<String, Value> {
    template["Resources"].as_object().unwrap()
}

fn of_type<'t>(template: &'t Value, kind: &str) -> Vec<(&'t str, &'t Value)> {
    resources(template)
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(name, r)| (name.as_str(), r))
        .collect()
}

/// A reference or ARN as one string: `!Ref X` is `X`, `!GetAtt B.Arn` is
/// `B.Arn`, `!Sub "${B.Arn}/k"` is `B.Arn/k`.
fn plain(value: &Value) -> String {
    if let Some(s) = value.as_str() {
        return s.to_owned();
    }
    if let Some(name) = value.get("Ref").and_then(Value::as_str) {
        return name.to_owned();
    }
    if let Some([resource, attribute]) = value
        .get("Fn::GetAtt")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
    {
        return format!(
            "{}.{}",
            resource.as_str().unwrap(),
            attribute.as_str().unwrap()
        );
    }
    if let Some(sub) = value.get("Fn::Sub").and_then(Value::as_str) {
        return sub.replace("${", "").replace('}', "");
    }
    panic!("not a reference: {value}")
}

/// A string or a list of them (IAM's `Action`, `Resource`).
fn one_or_many(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        one => vec![one],
    }
}

/// Whether `pattern` (`*` any run of characters, `/` included; `?` one
/// character: IAM resources, S3 policies and load-balancer path patterns
/// alike) matches all of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // matches[j]: pattern[..i] matches text[..j].
    let mut matches = vec![false; t.len() + 1];
    matches[0] = true;
    for &c in &p {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match c {
                '*' => matches[j] || (j > 0 && next[j - 1]),
                '?' => j > 0 && matches[j - 1],
                c => j > 0 && matches[j - 1] && t[j - 1] == c,
            };
        }
        matches = next;
    }
    matches[t.len()]
}

#[test]
fn the_glob_matches_as_iam_and_the_load_balancer_do() {
    assert!(glob("B/class-?.gz", "B/class-1.gz"));
    assert!(!glob("B/class-?.gz", "B/class-10.gz"));
    assert!(glob("B/class-*.gz", "B/class-1.gz/secret.gz"));
    assert!(glob("B/????/??/??/??/*", "B/2026/11/26/09/x.gz"));
    assert!(!glob("B/????/??/??/??/*", "B/_leases/transformer/s.json"));
    assert!(glob("/v1/races/*", "/v1/races/5"));
    assert!(!glob("/v1/races", "/v1/races/5"));
    assert!(glob("", ""));
    assert!(!glob("", "x"));
}

/// The principal of a statement that names everyone.
fn is_public(principal: &Value) -> bool {
    let everyone = |v: &Value| one_or_many(v).iter().any(|p| *p == "*");
    everyone(principal) || principal.get("AWS").is_some_and(everyone)
}

/// Keys the services keep in the history bucket that nobody outside may
/// read: merge state, race indexes, the disqualification list, imports,
/// race results and leaderboards, and whatever else a wildcard would
/// catch.
fn private_history_keys() -> Vec<String> {
    vec![
        "_state/history-merger.json".to_owned(),
        "_state/history-index/class-1.json.gz".to_owned(),
        alleycat_storage::disqualifications::LIST_KEY.to_owned(),
        format!(
            "{}class-1/20261126T090000Z-ab12.json.gz",
            alleycat_history::import::IMPORTS_PREFIX
        ),
        "results/races/5397285.json".to_owned(),
        "results/index/class-1.json".to_owned(),
        "results/leaderboards/class-1.json".to_owned(),
        "class-1.gz/anything".to_owned(),
        "class-7.gz".to_owned(),
        "class-1".to_owned(),
    ]
}

fn class_file_keys() -> Vec<String> {
    alleycat_core::ClassId::all()
        .map(alleycat_core::history::class_file_key)
        .collect()
}

#[test]
fn the_public_may_read_exactly_the_six_class_files() {
    let template = template();
    let mut public = Vec::new();
    for (name, policy) in of_type(&template, "AWS::S3::BucketPolicy") {
        let bucket = plain(&policy["Properties"]["Bucket"]);
        for statement in one_or_many(&policy["Properties"]["PolicyDocument"]["Statement"]) {
            for broadening in ["NotPrincipal", "NotAction", "NotResource"] {
                assert!(
                    statement.get(broadening).is_none() || statement["Effect"] == "Deny",
                    "{name}: an Allow with {broadening}"
                );
            }
            if statement["Effect"] == "Allow" && is_public(&statement["Principal"]) {
                public.push((name, bucket.clone(), statement));
            }
        }
    }
    assert_eq!(public.len(), 1, "public statements: {public:?}");
    let (name, bucket, statement) = public.pop().unwrap();
    assert_eq!(bucket, "HistoryBucket", "{name} opens another bucket");
    let actions: Vec<_> = one_or_many(&statement["Action"])
        .into_iter()
        .map(plain)
        .collect();
    assert_eq!(actions, ["s3:GetObject"], "{name}");
    assert!(
        statement.get("Condition").is_none(),
        "{name}: conditions are not expected"
    );

    let resources: Vec<String> = one_or_many(&statement["Resource"])
        .into_iter()
        .map(plain)
        .collect();
    let expected: BTreeSet<String> = class_file_keys()
        .iter()
        .map(|key| format!("HistoryBucket.Arn/{key}"))
        .collect();
    assert_eq!(resources.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(resources.len(), 6, "a class file named twice");
    // No wildcard: each names one key, so nothing else can ever match.
    for resource in &resources {
        assert!(!resource.contains(['*', '?']), "{resource}");
    }
    for key in private_history_keys() {
        let arn = format!("HistoryBucket.Arn/{key}");
        assert!(
            !resources.iter().any(|r| glob(r, &arn)),
            "the public may read {key}"
        );
    }
}

#[test]
fn the_history_bucket_allows_that_one_policy_and_nothing_else_public() {
    let template = template();
    let bucket = &resources(&template)["HistoryBucket"]["Properties"];
    assert_eq!(
        bucket["PublicAccessBlockConfiguration"],
        json!({
            "BlockPublicAcls": true,
            "IgnorePublicAcls": true,
            "BlockPublicPolicy": false,
            "RestrictPublicBuckets": false,
        })
    );
    assert_eq!(
        bucket["OwnershipControls"]["Rules"],
        json!([{ "ObjectOwnership": "BucketOwnerEnforced" }]),
        "ACLs must be disabled"
    );
    assert_encrypted("HistoryBucket", bucket);
    let cors = one_or_many(&bucket["CorsConfiguration"]["CorsRules"]);
    assert_eq!(cors.len(), 1);
    let methods: BTreeSet<_> = one_or_many(&cors[0]["AllowedMethods"])
        .into_iter()
        .map(plain)
        .collect();
    assert_eq!(
        methods,
        BTreeSet::from(["GET".to_owned(), "HEAD".to_owned()])
    );
    assert!(one_or_many(&cors[0]["ExposedHeaders"]).contains(&&json!("ETag")));
}

#[track_caller]
fn assert_encrypted(name: &str, bucket: &Value) {
    let rules = one_or_many(&bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]);
    assert!(
        rules
            .iter()
            .any(|rule| rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"].is_string()),
        "{name} is not encrypted"
    );
}

#[test]
fn every_other_bucket_is_private_and_every_bucket_encrypted() {
    let template = template();
    let buckets = of_type(&template, "AWS::S3::Bucket");
    assert!(buckets.iter().any(|(name, _)| *name == "DeliveryBucket"));
    for (name, bucket) in buckets {
        let properties = &bucket["Properties"];
        assert_encrypted(name, properties);
        assert!(
            properties.get("AccessControl").is_none(),
            "{name} sets an ACL"
        );
        if name == "HistoryBucket" {
            continue;
        }
        assert_eq!(
            properties["PublicAccessBlockConfiguration"],
            json!({
                "BlockPublicAcls": true,
                "IgnorePublicAcls": true,
                "BlockPublicPolicy": true,
                "RestrictPublicBuckets": true,
            }),
            "{name}"
        );
    }
}

#[test]
fn delivery_expiry_never_reaches_the_shard_leases() {
    let template = template();
    let lifecycle = &resources(&template)["DeliveryBucket"]["Properties"]["LifecycleConfiguration"];
    // !If [ExpiresDeliveries, {Rules: ...}, !Ref AWS::NoValue]: off by default.
    let branches = lifecycle["Fn::If"]
        .as_array()
        .expect("a lifecycle only when asked for");
    assert_eq!(branches[0], "ExpiresDeliveries");
    assert_eq!(branches[2], json!({ "Ref": "AWS::NoValue" }));
    let conditions = &template["Conditions"]["ExpiresDeliveries"];
    assert_eq!(
        *conditions,
        json!({ "Fn::Not": [{ "Fn::Equals": [{ "Ref": "DeliveryExpiryDays" }, 0] }] })
    );
    let now = chrono::Utc::now();
    let delivered = alleycat_core::delivery::delivery_key(now, "shardId-000000000000", "1", "2");
    let failed = alleycat_core::delivery::failed_key(now, "shardId-000000000000", "1", "2");
    let prefixes: Vec<String> = one_or_many(&branches[1]["Rules"])
        .into_iter()
        .map(|rule| plain(&rule["Prefix"]))
        .collect();
    for key in [&delivered, &failed] {
        assert!(
            prefixes.iter().any(|p| key.starts_with(p.as_str())),
            "{key} never expires"
        );
    }
    for lease in [
        "_leases/transformer/shardId-000000000000.json",
        "_leases/rankings-ip-10-0-1-5-8080/shardId-000000000000.json",
    ] {
        assert!(
            !prefixes.iter().any(|p| lease.starts_with(p.as_str())),
            "{lease} expires"
        );
    }
}

/// What each service's task role may do: (action, resource) pairs, the
/// resources as [`plain`] writes them. The template must say exactly this.
fn expected_grants(service: &str) -> BTreeSet<(String, String)> {
    let read_stream = [
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
    ]
    .map(|action| (action, "Stream.Arn"));
    let grants: Vec<(&str, &str)> = match service {
        "ingest" => vec![
            ("kinesis:PutRecords", "Stream.Arn"),
            ("kinesis:DescribeStreamSummary", "Stream.Arn"),
            // Record aggregation packs records per shard.
            ("kinesis:ListShards", "Stream.Arn"),
            (
                "s3:GetObject",
                "HistoryBucket.Arn/_admin/disqualifications.json",
            ),
            ("s3:ListBucket", "HistoryBucket.Arn"),
        ],
        "transformer" => [
            read_stream.to_vec(),
            vec![
                ("s3:GetObject", "DeliveryBucket.Arn/????/??/??/??/*"),
                ("s3:PutObject", "DeliveryBucket.Arn/????/??/??/??/*"),
                ("s3:GetObject", "DeliveryBucket.Arn/processing-failed/*"),
                ("s3:PutObject", "DeliveryBucket.Arn/processing-failed/*"),
                ("s3:GetObject", "DeliveryBucket.Arn/_leases/transformer/*"),
                ("s3:PutObject", "DeliveryBucket.Arn/_leases/transformer/*"),
                ("s3:ListBucket", "DeliveryBucket.Arn"),
            ],
        ]
        .concat(),
        "history" => vec![
            ("s3:GetObject", "DeliveryBucket.Arn/????/??/??/??/*"),
            ("s3:ListBucket", "DeliveryBucket.Arn"),
            ("s3:GetObject", "HistoryBucket.Arn/class-?.gz"),
            ("s3:PutObject", "HistoryBucket.Arn/class-?.gz"),
            ("s3:GetObject", "HistoryBucket.Arn/_state/*"),
            ("s3:PutObject", "HistoryBucket.Arn/_state/*"),
            (
                "s3:GetObject",
                "HistoryBucket.Arn/_admin/disqualifications.json",
            ),
            (
                "s3:PutObject",
                "HistoryBucket.Arn/_admin/disqualifications.json",
            ),
            ("s3:GetObject", "HistoryBucket.Arn/_imports/*"),
            ("s3:ListBucket", "HistoryBucket.Arn"),
        ],
        "rankings" => [
            read_stream.to_vec(),
            vec![
                ("s3:GetObject", "DeliveryBucket.Arn/_leases/rankings-*"),
                ("s3:PutObject", "DeliveryBucket.Arn/_leases/rankings-*"),
                ("s3:ListBucket", "DeliveryBucket.Arn"),
                ("s3:GetObject", "HistoryBucket.Arn/class-?.gz"),
                (
                    "s3:GetObject",
                    "HistoryBucket.Arn/_admin/disqualifications.json",
                ),
                ("s3:GetObject", "HistoryBucket.Arn/results/*"),
                ("s3:PutObject", "HistoryBucket.Arn/results/*"),
                ("s3:DeleteObject", "HistoryBucket.Arn/results/*"),
                ("s3:ListBucket", "HistoryBucket.Arn"),
            ],
        ]
        .concat(),
        other => panic!("no service {other}"),
    };
    grants
        .into_iter()
        .map(|(action, resource)| (action.to_owned(), resource.to_owned()))
        .collect()
}

fn capitalized(service: &str) -> String {
    let mut chars = service.chars();
    let first = chars.next().unwrap().to_ascii_uppercase();
    std::iter::once(first).chain(chars).collect()
}

/// Every (action, resource) an IAM policy document allows.
fn grants(document: &Value, whose: &str) -> BTreeSet<(String, String)> {
    let mut grants = BTreeSet::new();
    for statement in one_or_many(&document["Statement"]) {
        assert_eq!(statement["Effect"], "Allow", "{whose}: {statement}");
        for broadening in ["NotAction", "NotResource", "Principal"] {
            assert!(statement.get(broadening).is_none(), "{whose}: {broadening}");
        }
        for action in one_or_many(&statement["Action"]) {
            let action = plain(action);
            assert!(!action.contains('*'), "{whose}: {action}");
            for resource in one_or_many(&statement["Resource"]) {
                let resource = plain(resource);
                assert_ne!(resource, "*", "{whose}: {action} on everything");
                grants.insert((action.clone(), resource));
            }
        }
    }
    grants
}

#[test]
fn each_task_role_may_do_its_own_work_and_nothing_else() {
    let template = template();
    let resources = resources(&template);
    for service in SERVICES {
        let role_name = format!("{}TaskRole", capitalized(service));
        let role = &resources[&role_name]["Properties"];
        let mut granted = BTreeSet::new();
        for policy in one_or_many(&role["Policies"]) {
            granted.extend(grants(&policy["PolicyDocument"], &role_name));
        }
        let expected = expected_grants(service);
        assert_eq!(
            granted,
            expected,
            "{role_name}: granted but not expected {:?}, expected but not granted {:?}",
            granted.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&granted).collect::<Vec<_>>()
        );
        // The one managed policy: the metrics collector's log writes.
        assert_eq!(
            role["ManagedPolicyArns"],
            json!({ "Fn::If": ["HasMetricsCollector", [{ "Ref": "MetricsPublishingPolicy" }], { "Ref": "AWS::NoValue" }] }),
            "{role_name}"
        );
        let definition =
            &resources[&format!("{}TaskDefinition", capitalized(service))]["Properties"];
        assert_eq!(
            plain(&definition["TaskRoleArn"]),
            format!("{role_name}.Arn")
        );
    }
    let metrics = grants(
        &resources["MetricsPublishingPolicy"]["Properties"]["PolicyDocument"],
        "MetricsPublishingPolicy",
    );
    assert!(!metrics.is_empty());
    for (action, resource) in metrics {
        assert!(action.starts_with("logs:"), "{action}");
        assert_eq!(resource, "MetricsLogGroup.Arn");
    }
}

/// Some resource of `grants` lets `action` reach `arn`.
fn allows(grants: &BTreeSet<(String, String)>, action: &str, arn: &str) -> bool {
    grants
        .iter()
        .any(|(a, resource)| a == action && glob(resource, arn))
}

/// The roles against the keys the code uses: each service reaches what it
/// reads and writes, and not the private keys of the others.
#[test]
fn the_roles_reach_the_keys_the_services_use() {
    let now = chrono::Utc::now();
    let shard = "shardId-000000000001";
    let delivered = format!(
        "DeliveryBucket.Arn/{}",
        alleycat_core::delivery::delivery_key(now, shard, "1", "2")
    );
    let failed = format!(
        "DeliveryBucket.Arn/{}",
        alleycat_core::delivery::failed_key(now, shard, "1", "2")
    );
    // The lease table's keys: `_leases/<consumer>/<shard>.json`.
    let lease = |consumer: &str| format!("DeliveryBucket.Arn/_leases/{consumer}/{shard}.json");
    let transformer_lease = lease(alleycat_transformer::CONSUMER);
    let rankings_args = {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            rankings: alleycat_rankings::RankingsArgs,
        }
        Args::parse_from(["rankings"]).rankings
    };
    let rankings_lease = lease(&alleycat_rankings::consumer_name(&rankings_args, 8080));
    let history_key = |key: &str| format!("HistoryBucket.Arn/{key}");
    let list = history_key(alleycat_storage::disqualifications::LIST_KEY);
    let class_files: Vec<String> = class_file_keys().iter().map(|k| history_key(k)).collect();
    let state = history_key("_state/history-merger.json");
    let import = history_key(&format!(
        "{}class-2/x.json.gz",
        alleycat_history::import::IMPORTS_PREFIX
    ));
    let result = history_key("results/races/5397285.json");

    let ingest = expected_grants("ingest");
    let transformer = expected_grants("transformer");
    let history = expected_grants("history");
    let rankings = expected_grants("rankings");

    assert!(allows(&ingest, "s3:GetObject", &list));
    assert!(!allows(&ingest, "s3:PutObject", &list));
    for key in [&delivered, &failed, &transformer_lease] {
        assert!(allows(&transformer, "s3:PutObject", key), "{key}");
        assert!(allows(&transformer, "s3:GetObject", key), "{key}");
    }
    assert!(!allows(&transformer, "s3:PutObject", &rankings_lease));
    assert!(allows(&history, "s3:GetObject", &delivered));
    assert!(
        !allows(&history, "s3:GetObject", &transformer_lease),
        "history reads leases"
    );
    assert!(!allows(&history, "s3:GetObject", &failed));
    for key in class_files.iter().chain([&state, &list]) {
        assert!(allows(&history, "s3:PutObject", key), "{key}");
        assert!(allows(&history, "s3:GetObject", key), "{key}");
    }
    assert!(allows(&history, "s3:GetObject", &import));
    assert!(!allows(&history, "s3:PutObject", &import));
    assert!(!allows(&history, "s3:GetObject", &result));
    assert!(
        allows(&rankings, "s3:PutObject", &rankings_lease),
        "{rankings_lease}"
    );
    assert!(!allows(&rankings, "s3:PutObject", &transformer_lease));
    assert!(!allows(&rankings, "s3:GetObject", &delivered));
    assert!(allows(&rankings, "s3:PutObject", &result));
    for key in class_files.iter().chain([&list]) {
        assert!(allows(&rankings, "s3:GetObject", key), "{key}");
        assert!(!allows(&rankings, "s3:PutObject", key), "{key}");
    }
    assert!(!allows(&rankings, "s3:GetObject", &state));
}

/// The `alleycat` container of a task definition.
fn container(definition: &Value) -> &Value {
    one_or_many(&definition["Properties"]["ContainerDefinitions"])
        .into_iter()
        .find(|c| c["Name"] == "alleycat")
        .expect("a container named alleycat")
}

fn names(list: &Value) -> BTreeSet<String> {
    one_or_many(list)
        .into_iter()
        .map(|e| plain(&e["Name"]))
        .collect()
}

#[tokio::test]
async fn every_task_runs_a_subcommand_of_the_binary_with_settings_it_has() {
    let template = template();
    let mut commands = Vec::new();
    for (name, definition) in of_type(&template, "AWS::ECS::TaskDefinition") {
        let container = container(definition);
        assert_eq!(container["Image"], json!({ "Ref": "Image" }), "{name}");
        let command: Vec<String> = one_or_many(&container["Command"])
            .into_iter()
            .map(plain)
            .collect();
        let [service] = command.as_slice() else {
            panic!("{name}: command {command:?}")
        };
        let help = tokio::time::timeout(
            Duration::from_secs(60),
            crate::common::alleycat_command()
                .args([service.as_str(), "--help"])
                .output(),
        )
        .await
        .expect("alleycat --help within a minute")
        .unwrap();
        assert!(
            help.status.success(),
            "{name}: `alleycat {service} --help` failed: {help:?}"
        );
        let help = String::from_utf8(help.stdout).unwrap();

        let environment = &container["Environment"];
        let secrets = &container["Secrets"];
        for variable in names(environment).into_iter().chain(names(secrets)) {
            if !variable.starts_with("ALLEYCAT_") {
                continue;
            }
            // Read by the process's logging, before the command line.
            if ["ALLEYCAT_LOG", "ALLEYCAT_LOG_FORMAT"].contains(&variable.as_str()) {
                continue;
            }
            // `[env: NAME=value]`, or `[env: NAME]` for a secret's.
            assert!(
                ["=", "]"]
                    .iter()
                    .any(|end| help.contains(&format!("[env: {variable}{end}"))),
                "{name}: `alleycat {service}` has no setting {variable}"
            );
        }
        let value = |variable: &str| {
            one_or_many(environment)
                .into_iter()
                .find(|e| e["Name"] == variable)
                .map(|e| plain(&e["Value"]))
        };
        for (variable, expected) in [
            ("ALLEYCAT_STREAM", "kinesis"),
            ("ALLEYCAT_STORE", "s3"),
            ("ALLEYCAT_LISTEN", "0.0.0.0:8080"),
            ("ALLEYCAT_LOG_FORMAT", "json"),
            ("ALLEYCAT_STREAM_NAME", "Stream"),
            ("ALLEYCAT_DELIVERY_BUCKET", "DeliveryBucket"),
            ("ALLEYCAT_HISTORY_BUCKET", "HistoryBucket"),
        ] {
            assert_eq!(
                value(variable).as_deref(),
                Some(expected),
                "{name}: {variable}"
            );
        }
        // Secrets come from Secrets Manager, never as plain variables.
        for secret in ["ALLEYCAT_AUTH_SECRET", "ALLEYCAT_ADMIN_TOKEN"] {
            assert_eq!(value(secret), None, "{name}: {secret} in the clear");
        }
        let expected_secrets: BTreeSet<String> = match service.as_str() {
            "ingest" => BTreeSet::from(["ALLEYCAT_AUTH_SECRET".to_owned()]),
            "history" => BTreeSet::from(["ALLEYCAT_ADMIN_TOKEN".to_owned()]),
            _ => BTreeSet::new(),
        };
        assert_eq!(names(secrets), expected_secrets, "{name}");
        commands.push(service.clone());
    }
    commands.sort();
    let mut expected = SERVICES.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(commands, expected, "one task definition per service");
}

/// The load balancer's rules: (priority, path patterns, source CIDRs if
/// restricted, the rule's own Condition, target group).
struct Rule {
    name: String,
    priority: i64,
    paths: Vec<String>,
    source_ip: Option<Vec<Value>>,
    condition: Option<String>,
    target: String,
}

fn rules(template: &Value) -> Vec<Rule> {
    let mut rules: Vec<Rule> = of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule")
        .into_iter()
        .map(|(name, rule)| {
            let properties = &rule["Properties"];
            let mut paths = Vec::new();
            let mut source_ip = None;
            let mut values_in_rule = 0;
            for condition in one_or_many(&properties["Conditions"]) {
                // The load balancer refuses a rule (and the stack rolls
                // back) past 3 values a condition or 5 a rule.
                let values = ["PathPatternConfig", "SourceIpConfig"]
                    .iter()
                    .map(|config| one_or_many(&condition[config]["Values"]).len())
                    .sum::<usize>();
                assert!(
                    values <= 3,
                    "{name}: {values} values in one condition, the load balancer takes 3"
                );
                values_in_rule += values;
                match condition["Field"].as_str().unwrap() {
                    "path-pattern" => paths.extend(
                        one_or_many(&condition["PathPatternConfig"]["Values"])
                            .into_iter()
                            .map(plain),
                    ),
                    "source-ip" => {
                        source_ip = Some(
                            one_or_many(&condition["SourceIpConfig"]["Values"])
                                .into_iter()
                                .cloned()
                                .collect(),
                        );
                    }
                    other => panic!("{name}: a {other} condition is not expected"),
                }
            }
            assert!(
                values_in_rule <= 5,
                "{name}: {values_in_rule} values, the load balancer takes 5 a rule"
            );
            assert!(!paths.is_empty(), "{name} matches every path");
            let actions = one_or_many(&properties["Actions"]);
            assert_eq!(actions.len(), 1, "{name}");
            assert_eq!(actions[0]["Type"], "forward", "{name}");
            Rule {
                name: name.to_owned(),
                priority: properties["Priority"].as_i64().unwrap(),
                paths,
                source_ip,
                condition: rule.get("Condition").map(plain),
                target: plain(&actions[0]["TargetGroupArn"]),
            }
        })
        .collect();
    rules.sort_by_key(|r| r.priority);
    rules
}

/// The rule the load balancer applies to `path` from anywhere: the first
/// by priority whose paths match and that no source address restricts.
fn public_route<'r>(rules: &'r [Rule], path: &str) -> Option<&'r Rule> {
    rules
        .iter()
        .find(|r| r.source_ip.is_none() && r.paths.iter().any(|p| glob(p, path)))
}

#[test]
fn the_load_balancer_routes_the_public_paths_and_never_the_admin_api() {
    let template = template();
    let rules = rules(&template);
    for (path, target) in [
        ("/v1/telemetry", "IngestTargetGroup"),
        ("/v1/telemetry/ws", "IngestTargetGroup"),
        ("/v1/rankings/ws", "RankingsTargetGroup"),
        ("/v1/races", "RankingsTargetGroup"),
        ("/v1/races/5397285", "RankingsTargetGroup"),
        ("/v1/leaderboard", "RankingsTargetGroup"),
        ("/", "RankingsTargetGroup"),
        ("/getRaces", "RankingsTargetGroup"),
        ("/leaderboard", "RankingsTargetGroup"),
        ("/v1/racers/101/bests", "RankingsTargetGroup"),
        ("/history/class-1.gz", "HistoryTargetGroup"),
        ("/history/class-6.gz", "HistoryTargetGroup"),
    ] {
        let rule = public_route(&rules, path).unwrap_or_else(|| panic!("{path} is not routed"));
        assert_eq!(rule.target, target, "{path}");
    }
    // Every path of the OpenAPI document is routed, but the operators'
    // API, the probes and the metrics.
    let openapi: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("frontend-contract/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut admin_paths = Vec::new();
    for template_path in openapi["paths"].as_object().unwrap().keys() {
        let path = template_path
            .replace("{N}", "3")
            .replace("{raceId}", "5397285")
            .replace("{id}", "1")
            .replace("{racerId}", "101");
        assert!(
            !path.contains('{'),
            "{template_path}: fill in its parameter here"
        );
        if path.starts_with("/v1/admin/") {
            admin_paths.push(path);
        } else if ["/healthz", "/readyz", "/metrics"].contains(&path.as_str()) {
            assert!(public_route(&rules, &path).is_none(), "{path} is public");
        } else {
            assert!(
                public_route(&rules, &path).is_some(),
                "{path} is not routed"
            );
        }
    }
    assert!(admin_paths.len() >= 2, "{admin_paths:?}");
    for path in admin_paths
        .iter()
        .map(String::as_str)
        .chain(["/metrics", "/v1/admin/x/../../history/class-1.gz"])
    {
        if path.starts_with("/v1/admin/") {
            for rule in rules
                .iter()
                .filter(|r| r.paths.iter().any(|p| glob(p, path)))
            {
                // Only from AdminCidr, and only when it is set.
                assert_eq!(
                    rule.source_ip,
                    Some(vec![json!({ "Ref": "AdminCidr" })]),
                    "{}: {path}",
                    rule.name
                );
                assert_eq!(
                    rule.condition.as_deref(),
                    Some("HasAdminCidr"),
                    "{}",
                    rule.name
                );
                assert_eq!(rule.target, "HistoryTargetGroup", "{}", rule.name);
            }
        }
        assert!(public_route(&rules, path).is_none(), "{path} is public");
    }
    assert_eq!(
        template["Conditions"]["HasAdminCidr"],
        json!({ "Fn::Not": [{ "Fn::Equals": [{ "Ref": "AdminCidr" }, ""] }] })
    );
    assert_eq!(template["Parameters"]["AdminCidr"]["Default"], "");
    // Unmatched requests are answered by the listeners themselves.
    for (name, listener) in of_type(&template, "AWS::ElasticLoadBalancingV2::Listener") {
        let text = listener["Properties"]["DefaultActions"].to_string();
        assert!(
            !text.contains("forward") && !text.contains("TargetGroup"),
            "{name} forwards by default"
        );
    }
}

#[test]
fn idle_connections_outlive_the_services_websocket_limits() {
    let template = template();
    let attributes =
        one_or_many(&resources(&template)["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]);
    let idle_s: u64 = attributes
        .iter()
        .find(|a| a["Key"] == "idle_timeout.timeout_seconds")
        .map(|a| plain(&a["Value"]).parse().unwrap())
        .expect("an idle timeout");
    // Viewers are pinged every half of it; a bike silent that long is closed.
    let ws_idle_ms: u64 = 60_000;
    assert!(
        idle_s * 1000 > ws_idle_ms,
        "the load balancer would cut sockets the service keeps"
    );
    // Behind it, a service keeps idle keep-alive connections longer than
    // the load balancer does (else it closes one the balancer reuses: 502).
    for service in ["ingest", "history", "rankings"] {
        let definition = &resources(&template)[&format!("{}TaskDefinition", capitalized(service))];
        let keep_alive_ms: u64 = one_or_many(&container(definition)["Environment"])
            .into_iter()
            .find(|e| e["Name"] == "ALLEYCAT_HEADER_TIMEOUT_MS")
            .map(|e| plain(&e["Value"]).parse().unwrap())
            .unwrap_or_else(|| panic!("{service}: no ALLEYCAT_HEADER_TIMEOUT_MS"));
        assert!(keep_alive_ms > idle_s * 1000, "{service}");
    }
}

/// The metrics the alarms and the collector name, found in the services'
/// source (a rename there must be made here too).
#[test]
fn the_alarms_watch_metrics_the_services_export() {
    let template = template();
    let resources = resources(&template);
    let lag = &resources["ConsumerLagAlarm"]["Properties"];
    assert_eq!(lag["Namespace"], "AWS/Kinesis");
    assert_eq!(lag["MetricName"], "GetRecords.IteratorAgeMilliseconds");
    assert_eq!(
        lag["Dimensions"],
        json!([{ "Name": "StreamName", "Value": { "Ref": "Stream" } }])
    );

    let config = plain(&resources["MetricsCollectorConfig"]["Properties"]["Value"]);
    let freshness = &resources["DataFreshnessAlarm"]["Properties"];
    let mut watched = Vec::new();
    for metric in one_or_many(&freshness["Metrics"]) {
        if let Some(name) = metric["MetricStat"]["Metric"]["MetricName"].as_str() {
            assert!(
                config.contains(&format!("^{name}")),
                "the collector does not send {name}"
            );
            watched.push(name.to_owned());
        }
    }
    assert_eq!(watched.len(), 3, "{watched:?}");
    let mut source = String::new();
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("services");
    let mut dirs = vec![services];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    for name in &watched {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "no service exports {name}"
        );
    }
    // The lag is the transformer's: its consumer name, in the gauge's label.
    assert!(
        source.contains("\"consumer\" =>"),
        "the lag gauge has no consumer label"
    );
    assert!(
        config.contains(&format!("regex: ^{}", alleycat_transformer::CONSUMER)),
        "{config}"
    );
}
