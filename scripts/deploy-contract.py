#!/usr/bin/env python3
"""What the CloudFormation stack must promise for a fleet that deploys and keeps itself up; each rule names the
failure it prevents. Run by scripts/check-deploy.sh with the cfn-lint venv's python (for cfnlint's decoder).

    deploy-contract.py deploy/cloudformation/upshot.yaml
"""
import json
import sys
import tomllib

from cfnlint.decode import decode

template, errors = decode(sys.argv[1])
if errors:
    sys.exit(f"cannot read {sys.argv[1]}: {errors}")
resources = template["Resources"]
failures = []
checked = 0


def rule(ok, message):
    global checked
    checked += 1
    if not ok:
        failures.append(message)


def of_type(kind):
    return {name: body for name, body in resources.items() if body["Type"] == kind}


def refs(value):
    """The logical ids a value points at (Ref, GetAtt), anywhere inside it."""
    if isinstance(value, dict):
        if "Ref" in value:
            yield value["Ref"]
        if "Fn::GetAtt" in value:
            yield value["Fn::GetAtt"][0]
        for inner in value.values():
            yield from refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from refs(inner)


# Health checks that kill the fleet: an ELB-type ASG replaces whatever the target group calls unhealthy, so the
# target group must ask "is the process alive", never "are the database and S3 reachable".
for name, group in of_type("AWS::ElasticLoadBalancingV2::TargetGroup").items():
    path = group["Properties"].get("HealthCheckPath")
    rule(path == "/healthz", f"{name} health check is {path!r}, not the liveness endpoint /healthz")
for name, group in of_type("AWS::AutoScaling::AutoScalingGroup").items():
    rule(group["Properties"].get("HealthCheckType") in ("ELB", "EC2"), f"{name} has no health check type")

# The first deployment must not deadlock on its own alarm: a fleet with no revision yet fails its health checks
# and answers 5xx, so no alarm on those metrics may stop a deployment.
fleet_metrics = {"UnHealthyHostCount", "HealthyHostCount", "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count"}
for name, group in of_type("AWS::CodeDeploy::DeploymentGroup").items():
    alarms = group["Properties"].get("AlarmConfiguration", {})
    for alarm in alarms.get("Alarms", []) if alarms.get("Enabled") else []:
        for alarm_id in refs(alarm):
            metric = resources.get(alarm_id, {}).get("Properties", {}).get("MetricName")
            rule(metric not in fleet_metrics, f"{name} stops deployments on {alarm_id} ({metric}), which a broken fleet raises")
    rule("DEPLOYMENT_FAILURE" in group["Properties"].get("AutoRollbackConfiguration", {}).get("Events", []),
         f"{name} does not roll back a failed deployment")

# The fleet must heal after quiet months: the revision it runs stays in the artifact bucket.
pipeline_store = set()
for pipeline in of_type("AWS::CodePipeline::Pipeline").values():
    pipeline_store.update(refs(pipeline["Properties"].get("ArtifactStore", {})))
rule(pipeline_store, "the pipeline names no artifact bucket")
for name in pipeline_store:
    for lifecycle_rule in resources[name]["Properties"].get("LifecycleConfiguration", {}).get("Rules", []):
        expires_current = any(k in lifecycle_rule for k in ("ExpirationInDays", "ExpirationDate"))
        rule(not expires_current, f"{name} rule {lifecycle_rule.get('Id')} expires current artifacts, the running revision among them")

# CodeDeploy launches instances from the group's launch template: it needs to run, tag, and pass the instance role.
for name, group in of_type("AWS::CodeDeploy::DeploymentGroup").items():
    role = next(refs(group["Properties"]["ServiceRoleArn"]))
    statements = [s for p in resources[role]["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]

    def allowed(action):
        return [s for s in statements if s["Effect"] == "Allow" and action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]

    for action in ("ec2:RunInstances", "ec2:CreateTags"):
        rule(allowed(action), f"{role} lacks {action}")
    instance_roles = {r for lt in of_type("AWS::IAM::InstanceProfile").values() for r in refs(lt["Properties"]["Roles"])}
    passed = {r for s in allowed("iam:PassRole") for r in refs(s["Resource"])}
    rule(passed and passed <= instance_roles, f"{role} must pass exactly the instance role (passes {sorted(passed)})")

# /metrics is for the agent on the instance: every public listener answers it before forwarding.
for name, listener in of_type("AWS::ElasticLoadBalancingV2::Listener").items():
    blocking = [
        r for r in of_type("AWS::ElasticLoadBalancingV2::ListenerRule").values()
        if name in refs(r["Properties"]["ListenerArn"])
        and any("/metrics" in c.get("PathPatternConfig", {}).get("Values", []) for c in r["Properties"]["Conditions"])
        and all(a["Type"] == "fixed-response" for a in r["Properties"]["Actions"])
    ]
    rule(blocking, f"{name} forwards /metrics to the instances")

# Settings the service cannot run without in production reach the instances.
parameters = {p["Properties"]["Name"]["Fn::Sub"].rsplit("/", 1)[-1] for p in of_type("AWS::SSM::Parameter").values()}
for needed in ("public-url", "admin-secret-arn", "upload-queue-url"):
    rule(needed in parameters, f"no SSM parameter {needed} for after-install.sh")

# The consistency check's findings reach a person: the agent listens where the aws profile sends the figures,
# and alarms watch lost images and runs that stopped.
agent = json.load(open("deploy/cloudwatch/agent.json"))
listener = agent["metrics"]["metrics_collected"].get("statsd", {}).get("service_address")
sent_to = tomllib.load(open("Rocket.toml", "rb")).get("aws", {}).get("statsd_addr")
rule(listener and listener == sent_to, f"the agent's StatsD listener {listener!r} is not where reconcile sends ({sent_to!r})")
watched = {a["Properties"].get("MetricName"): a["Properties"] for a in of_type("AWS::CloudWatch::Alarm").values()}
missing_alarm = watched.get("upshot_reconcile_missing", {})
rule(missing_alarm.get("Threshold") == 0 and missing_alarm.get("ComparisonOperator") == "GreaterThanThreshold",
     "no alarm on images missing from the bucket (upshot_reconcile_missing > 0)")
rule(watched.get("upshot_reconcile_runs", {}).get("TreatMissingData") == "breaching",
     "no alarm on a consistency check that stopped running (upshot_reconcile_runs missing)")

# Direct uploads: the bucket announces incoming/ to a queue with a dead-letter queue, lets browsers PUT from
# the site alone, and forgets what sessions left behind.
bucket = resources["ImagesBucket"]["Properties"]
queues = bucket.get("NotificationConfiguration", {}).get("QueueConfigurations", [])
rule(any(q.get("Filter", {}).get("S3Key", {}).get("Rules") == [{"Name": "prefix", "Value": "incoming/"}] for q in queues),
     "the images bucket does not announce incoming/ to a queue")
for q in queues:
    for queue in refs(q["Queue"]):
        rule("RedrivePolicy" in resources[queue]["Properties"], f"{queue} has no dead-letter queue")
cors = bucket.get("CorsConfiguration", {}).get("CorsRules", [])
rule(cors and all(r["AllowedMethods"] == ["PUT"] and "*" not in str(r["AllowedOrigins"]) for r in cors),
     "the images bucket's CORS must allow PUT from the site's origin only")
rule(any(r.get("Prefix") == "incoming/" and "ExpirationInDays" in r and "AbortIncompleteMultipartUpload" in r
         for r in bucket.get("LifecycleConfiguration", {}).get("Rules", [])),
     "nothing expires what direct upload sessions leave in incoming/")

for failure in failures:
    print(failure)
print(f"{checked} promises of the stack checked, {len(failures)} broken")
sys.exit(1 if failures else 0)
