#!/usr/bin/env python3
"""What the CloudFormation stack must promise for a fleet that deploys and keeps itself up; each rule names the
failure it prevents. Run by scripts/check-deploy.sh with the cfn-lint venv's python (for cfnlint's decoder).

    deploy-contract.py deploy/cloudformation/upshot.yaml
"""
import fnmatch
import json
import os
import re
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
fleet_metrics = {"UnHealthyHostCount", "HealthyHostCount", "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count", "upshot_ready"}
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

# The template must reach CloudFormation: over 51,200 bytes it cannot be passed directly, only from S3 (at most
# 1,000,000 bytes), so the documented create/update commands upload it. The pipeline's CloudFormation action
# takes it from the source artifact: documented up to 1 MB, reported to stop at 512 KB (cloudformation-coverage-
# roadmap#1023); the template stays under the lower figure.
DIRECT_LIMIT, S3_LIMIT, PIPELINE_LIMIT = 51_200, 1_000_000, 512_000
size = os.path.getsize(sys.argv[1])
rule(size <= S3_LIMIT, f"the template is {size} bytes, over CloudFormation's {S3_LIMIT} for a template in S3")
rule(size <= PIPELINE_LIMIT, f"the template is {size} bytes, over the {PIPELINE_LIMIT} the pipeline's CloudFormation action accepts")
if size > DIRECT_LIMIT:
    for doc in ("README.md", "deploy/README.md"):
        # The commands in its code blocks, continuation lines joined.
        blocks = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", open(doc).read(), re.S))
        text = re.sub(r"\\\n\s*", " ", blocks)
        for command in re.findall(r"aws cloudformation (?:deploy|create-stack|update-stack)\b[^\n]*", text):
            rule("--s3-bucket" in command or "--template-url" in command,
                 f"{doc}: `{command[:60]}...` passes the {size}-byte template directly (over {DIRECT_LIMIT}): add --s3-bucket or --template-url")

# A push that needs new infrastructure gets it: the pipeline updates this stack from the pushed template before
# CodeDeploy installs the code, with every parameter at the stack's current value (a parameter left out of
# ParameterOverrides falls back to its default, reverting whatever the operator chose).
parameters_of_template = template.get("Parameters", {})


def pipeline_actions(pipeline):
    """(stage index, run order, action) in the order the pipeline runs them."""
    for index, stage in enumerate(pipeline["Properties"]["Stages"]):
        for action in stage["Actions"]:
            yield index, action.get("RunOrder", 1), action


for name, pipeline in of_type("AWS::CodePipeline::Pipeline").items():
    actions = list(pipeline_actions(pipeline))
    stacks = [(i, o, a) for i, o, a in actions if a["ActionTypeId"]["Provider"] == "CloudFormation"]
    deploys = [(i, o, a) for i, o, a in actions if a["ActionTypeId"]["Provider"] == "CodeDeploy"]
    rule(stacks and deploys and max((i, o) for i, o, _ in stacks) < min((i, o) for i, o, _ in deploys),
         f"{name}: no CloudFormation action updates the stack before CodeDeploy installs code that may need it")
    for _, _, action in stacks:
        config = action["Configuration"]
        aname = action["Name"]
        rule(config.get("StackName") == {"Ref": "AWS::StackName"}, f"{name} {aname} updates another stack than this one")
        path = str(config.get("TemplatePath", "")).split("::", 1)[-1]
        rule(os.path.abspath(path) == os.path.abspath(sys.argv[1]), f"{name} {aname} deploys {path!r}, not this template")
        role = list(refs(config.get("RoleArn", {})))
        rule(role and all(resources.get(r, {}).get("Type") == "AWS::IAM::Role" for r in role),
             f"{name} {aname} has no CloudFormation service role of this template (RoleArn), so it acts with the pipeline's rights or none")
        # One !Sub, or a !Join of !Subs with no separator (a line each, for reading).
        overrides = config.get("ParameterOverrides", {})
        parts = overrides.get("Fn::Join", ["", []]) if isinstance(overrides, dict) else ["", []]
        body = (parts[0].join(p.get("Fn::Sub", "") for p in parts[1]) if "Fn::Join" in overrides
                else overrides.get("Fn::Sub", "") if isinstance(overrides, dict) else "")
        passed = dict(re.findall(r'"(\w+)"\s*:\s*"\$\{(\w+)\}"', body))
        for pname, spec in parameters_of_template.items():
            fixed = spec.get("AllowedValues") == [spec.get("Default")]
            rule(passed.get(pname) == pname or fixed,
                 f"{name} {aname}: ParameterOverrides does not pass {pname} as ${{{pname}}}; the pipeline's update would reset it to its default")
        rule(set(passed) <= set(parameters_of_template), f"{name} {aname} passes parameters the template lacks: {sorted(set(passed) - set(parameters_of_template))}")

        # CodePipeline refuses a configuration value over 1,000 characters: the longest values allowed must fit.
        def longest(pname):
            spec = parameters_of_template[pname]
            if "AllowedValues" in spec:
                return max(len(str(v)) for v in spec["AllowedValues"])
            if "MaxLength" in spec:
                return int(spec["MaxLength"])
            if spec.get("Type") == "Number" and "MaxValue" in spec:
                return len(str(spec["MaxValue"]))
            return None

        unbounded = [p for p in set(re.findall(r"\$\{(\w+)\}", body)) if longest(p) is None]
        rule(not unbounded, f"{name} {aname}: ParameterOverrides has no bound for {sorted(unbounded)} (MaxLength, AllowedValues or MaxValue)")
        worst = len(re.sub(r"\$\{(\w+)\}", lambda m: "x" * (longest(m.group(1)) or 0), body))
        rule(worst <= 1000, f"{name} {aname}: ParameterOverrides can reach {worst} characters, over CodePipeline's 1,000")
        # A quote or backslash in a value would make the overrides invalid JSON.
        for pname in set(passed.values()) & set(parameters_of_template):
            spec = parameters_of_template[pname]
            if "AllowedValues" in spec or spec.get("Type") == "Number":
                continue
            pattern = spec.get("AllowedPattern")
            rule(pattern and not any(re.fullmatch(pattern, bad) for bad in ('a"b@c.d', "a\\b@c.d", 'a"b', "a\\b")),
                 f"{name} {aname}: {pname} may hold a quote or backslash, which breaks ParameterOverrides' JSON")
    # The pipeline may hand CloudFormation its role, and that role only, and touch this stack only.
    prole = next(refs(pipeline["Properties"]["RoleArn"]))
    pstatements = [s for p in resources[prole]["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    passes = {r for s in pstatements if "iam:PassRole" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
              for r in refs(s["Resource"])}
    wanted = {r for _, _, a in stacks for r in refs(a["Configuration"].get("RoleArn", {}))}
    rule(passes == wanted, f"{prole} must pass exactly the CloudFormation role {sorted(wanted)} (passes {sorted(passes)})")
    cfn_resources = [s["Resource"] for s in pstatements
                     if any(str(a).startswith("cloudformation:") for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))]
    rule(cfn_resources and all(r == {"Ref": "AWS::StackId"} for r in cfn_resources),
         f"{prole}'s CloudFormation rights must name this stack only (AWS::StackId)")

# The service connects as its own least-privilege role, whose credentials the stack generates; the hooks find
# them through /upshot/<env>/db-app-secret-arn, and the instances may read them.
app_db = [n for n, r in of_type("AWS::SecretsManager::Secret").items()
          if '"upshot_app"' in r["Properties"].get("GenerateSecretString", {}).get("SecretStringTemplate", "")]
rule(app_db, "no generated secret holds the service's own database role (upshot_app): it would connect as the RDS master")
for secret in app_db:
    gen = resources[secret]["Properties"]["GenerateSecretString"]
    rule(gen.get("GenerateStringKey") == "password" and set("\"@/\\:'` ") <= set(gen.get("ExcludeCharacters", "")),
         f"{secret}'s generated password may hold characters that break the database URL or the passfile")
    rule("KmsKeyId" in resources[secret]["Properties"], f"{secret} is not encrypted with the stack's key")
    rule(any(p["Properties"]["Name"] == {"Fn::Sub": "/upshot/${EnvironmentName}/db-app-secret-arn"}
             and secret in set(refs(p["Properties"]["Value"])) for p in of_type("AWS::SSM::Parameter").values()),
         f"no SSM parameter /upshot/<env>/db-app-secret-arn names {secret} for the hooks")
instance_statements = [s for p in resources["InstanceRole"]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def instance_may(action):
    return [s for s in instance_statements if action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])]


readable = {r for s in instance_may("secretsmanager:GetSecretValue") for r in refs(s["Resource"])}
for secret in app_db:
    rule(secret in readable, f"the instances may not read {secret}, the service's database credentials")
# GetParametersByPath is authorized against the path, not the parameters below it.
by_path = [json.dumps(s["Resource"]) for s in instance_may("ssm:GetParametersByPath")]
rule(any('parameter/upshot/${EnvironmentName}"' in r for r in by_path),
     "the instance role may not call GetParametersByPath on /upshot/<env> itself, so AfterInstall's read is denied")

# TLS to the database is verified: user data puts the RDS CA bundle where deploy.conf says, before the agent.
user_data = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
ca = user_data.find("truststore.pki.rds.amazonaws.com")
rule(0 <= ca < user_data.find("codedeploy-agent") and "/etc/upshot/rds-ca.pem" in user_data,
     "user data does not fetch the RDS CA bundle to /etc/upshot/rds-ca.pem before the CodeDeploy agent starts (no verify-full)")
rule("UPSHOT_DB_CA_FILE=/etc/upshot/rds-ca.pem" in user_data, "deploy.conf does not name the RDS CA bundle (UPSHOT_DB_CA_FILE)")

# The S3 endpoint carries only what the instances need.
for name, endpoint in of_type("AWS::EC2::VPCEndpoint").items():
    if "s3" not in json.dumps(endpoint["Properties"]["ServiceName"]):
        continue
    policy = endpoint["Properties"].get("PolicyDocument", {}).get("Statement", [])
    named = {r for s in policy for r in refs(s.get("Resource", []))}
    rule(policy and all(s.get("Resource") not in ("*", ["*"]) for s in policy) and {"ImagesBucket", "ArtifactBucket"} <= named,
         f"{name} lets the instances reach any bucket (no endpoint policy naming the buckets they use)")

# The bucket's CORS origin is what browsers send: lower case, no trailing slash. The site's name is constrained
# to that, and the load balancer's DNS name (the origin without one) is lower case because its name is.
domain = parameters_of_template.get("DomainName", {})
pattern = domain.get("AllowedPattern", "")
rule(pattern and re.fullmatch(pattern, "upshot.example.com") and not any(
    re.fullmatch(pattern, bad) for bad in ("Upshot.Example.com", "upshot.example.com/", "https://upshot.example.com", "upshot.example.com."))
     and domain.get("ConstraintDescription"),
     "DomainName admits an origin browsers never send (capitals, scheme, trailing slash or dot), so CORS would refuse the site")
lb_name = resources["LoadBalancer"]["Properties"].get("Name")
lb_literal = re.sub(r"\$\{EnvironmentName\}", "", lb_name.get("Fn::Sub", "") if isinstance(lb_name, dict) else str(lb_name or ""))
rule(lb_name and not re.search(r"[A-Z]|\$\{", lb_literal) and (isinstance(lb_name, str) or "Fn::Sub" in lb_name),
     "the load balancer's generated name has capitals, so its DNS name (the origin without DomainName) never matches CORS")

# A new stack's first deployment is not cut short, and scale-in lets lifecycle events finish.
for name, group in of_type("AWS::AutoScaling::AutoScalingGroup").items():
    grace = int(group["Properties"].get("HealthCheckGracePeriod", 0))
    rule(grace >= 3600, f"{name} replaces an instance {grace}s after launch, before a new stack's first pipeline run has deployed to it")
for name, group in of_type("AWS::CodeDeploy::DeploymentGroup").items():
    rule(group["Properties"].get("TerminationHookEnabled") is True,
         f"{name} lets scale-in terminate an instance in the middle of a lifecycle event (TerminationHookEnabled)")
for name, pipeline in of_type("AWS::CodePipeline::Pipeline").items():
    after = set(pipeline.get("DependsOn", []))
    rule({"Database", "AutoScalingGroup"} <= after,
         f"{name}'s first run may update the stack while it is still being created (DependsOn the database and the group)")

# Inference runs on the CPU in every upload: the default instance has a baseline that fits, or is T3 Unlimited.
itype = parameters_of_template["InstanceType"]["Default"]
credits = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"].get("CreditSpecification")
rule(not itype.startswith(("t2.", "t3.", "t3a.", "t4g.")) or "unlimited" in json.dumps(credits),
     f"the default {itype} is throttled to its CPU baseline once its credits are spent (no CpuCredits: unlimited)")

# Alarms that page a person: the database, the disks, readiness and the password refresh, on the topic with
# the on-call e-mail.
paged = {next(refs(s["Properties"]["TopicArn"])) for s in of_type("AWS::SNS::Subscription").values()
         if s["Properties"].get("Endpoint") == {"Ref": "AlarmEmail"}}
alarms = {a["Properties"].get("MetricName"): a["Properties"] for a in of_type("AWS::CloudWatch::Alarm").values()}
for metric, namespace in (("CPUUtilization", "AWS/RDS"), ("FreeStorageSpace", "AWS/RDS"), ("DatabaseConnections", "AWS/RDS"),
                          ("disk_used_percent", "CWAgent"), ("upshot_db_password_refresh_ok", "CWAgent"), ("upshot_ready", "CWAgent"),
                          ("upshot_outbox_oldest_unsent_seconds", "CWAgent"), ("upshot_outbox_failed", "CWAgent"),
                          ("HTTPCode_Target_5XX_Count", "AWS/ApplicationELB"), ("TargetResponseTime", "AWS/ApplicationELB")):
    found = [a for a in of_type("AWS::CloudWatch::Alarm").values()
             if a["Properties"].get("MetricName") == metric and a["Properties"].get("Namespace") == namespace]
    rule(found and all(set(refs(a["Properties"].get("AlarmActions", []))) & paged for a in found),
         f"no alarm on {namespace} {metric} pages the alarm e-mail")
ready = alarms.get("upshot_ready", {})
rule(ready.get("Statistic") == "Minimum" and ready.get("Threshold") == 1 and ready.get("ComparisonOperator") == "LessThanThreshold"
     and ready.get("TreatMissingData") == "breaching" and ready.get("EvaluationPeriods") == 3,
     "the readiness alarm must fire when any instance is unready, or none reports, for 3 periods")
latency = alarms.get("TargetResponseTime", {})
rule(latency.get("ExtendedStatistic") == "p99", "the latency alarm must watch the p99 of TargetResponseTime")

# A failed pipeline run and a failed deployment page the same person: EventBridge rules on their failure events,
# whose target the alarm topic lets EventBridge publish to (and its key, EventBridge encrypt for).
def failure_rule(source, state):
    return [r for r in of_type("AWS::Events::Rule").values()
            if r["Properties"].get("EventPattern", {}).get("source") == [source]
            and r["Properties"]["EventPattern"].get("detail", {}).get("state") == [state]
            and any(set(refs(t.get("Arn"))) & paged for t in r["Properties"].get("Targets", []))]


for source, state in (("aws.codepipeline", "FAILED"), ("aws.codedeploy", "FAILURE")):
    rule(failure_rule(source, state), f"no EventBridge rule sends {source} {state} events to the alarm e-mail's topic")
topic_policies = [p["Properties"] for p in of_type("AWS::SNS::TopicPolicy").values() if set(refs(p["Properties"]["Topics"])) & paged]
publishers = {json.dumps(st.get("Principal")) for p in topic_policies for st in p["PolicyDocument"]["Statement"]
              if st.get("Effect") == "Allow" and st.get("Action") == "sns:Publish"}
rule(not topic_policies or {json.dumps({"Service": "cloudwatch.amazonaws.com"}), json.dumps({"Service": "events.amazonaws.com"})} <= publishers,
     "the alarm topic's policy must let both CloudWatch alarms and the EventBridge rules publish")
key_services = json.dumps(resources["StackKey"]["Properties"]["KeyPolicy"])
rule("events.amazonaws.com" in key_services, "EventBridge cannot encrypt for the alarm topic: the stack key does not allow it")

# One dashboard shows every alarm's state, and the metrics behind them.
dashboards = list(of_type("AWS::CloudWatch::Dashboard").values())
rule(len(dashboards) == 1, "the stack has no dashboard (or more than one)")
if dashboards:
    body = dashboards[0]["Properties"]["DashboardBody"]
    text = body["Fn::Sub"][0] if isinstance(body, dict) and "Fn::Sub" in body else json.dumps(body)
    shown = set(re.findall(r"\$\{(\w+)\.Arn\}", text))
    missing = sorted(set(of_type("AWS::CloudWatch::Alarm")) - shown)
    rule(not missing, f"the dashboard does not show the alarms {missing}")
    for metric in ("RequestCount", "TargetResponseTime", "HTTPCode_Target_5XX_Count", "upshot_outbox_oldest_unsent_seconds",
                   "upshot_reconcile_orphans", "CPUUtilization", "mem_used_percent", "DatabaseConnections",
                   "upshot_uploads_stored", "upshot_errors", "upshot_inference_ms"):
        rule(metric in text, f"the dashboard does not chart {metric}")

# The dashboard's errors by code need the agent to keep the `code` tag when it aggregates by group.
rule(any(sorted(d) == ["AutoScalingGroupName", "code"] for d in agent["metrics"].get("aggregation_dimensions", [])),
     "the agent does not aggregate upshot_errors by group and code, so the dashboard shows no errors by code")
# The agent publishes what the alarms watch: CWAgent metrics aggregated to exactly the alarms' dimensions.
collected = agent["metrics"]["metrics_collected"]
rule("disk_used_percent" in collected.get("disk", {}).get("measurement", []) and "/" in collected.get("disk", {}).get("resources", []),
     "the CloudWatch agent does not collect disk_used_percent for /")
aggregations = [sorted(d) for d in agent["metrics"].get("aggregation_dimensions", [])]
for metric, alarm in alarms.items():
    if alarm.get("Namespace") == "CWAgent":
        dims = sorted(d["Name"] for d in alarm.get("Dimensions", []))
        rule(dims in aggregations, f"the agent publishes no {metric} aggregated by {dims}, so its alarm never sees data")

# Traces reach X-Ray: the agent receives OTLP over HTTP where the hooks point the service, the instance role may
# write to X-Ray, and the sampled share comes from an optional parameter under the environment's prefix.
otlp = agent.get("traces", {}).get("traces_collected", {}).get("otlp", {})
hooks_text = open("deploy/codedeploy/after-install.sh").read()
pointed = re.search(r"OTEL_EXPORTER_OTLP_ENDPOINT=http://([\d.]+:\d+)", hooks_text)
rule(otlp.get("http_endpoint") and pointed and otlp["http_endpoint"] == pointed.group(1),
     f"the agent's OTLP/HTTP receiver {otlp.get('http_endpoint')!r} is not where the service exports ({pointed and pointed.group(1)!r})")
managed = json.dumps(resources["InstanceRole"]["Properties"].get("ManagedPolicyArns", []))
rule(instance_may("xray:PutTraceSegments") or "CloudWatchAgentServerPolicy" in managed or "AWSXRayDaemonWriteAccess" in managed,
     "the instances may not write to X-Ray: the agent would drop every span")
rule("param trace-sample-ratio" in hooks_text and "OTEL_TRACES_SAMPLER_ARG" in hooks_text,
     "the trace sample ratio does not reach the instances (SSM parameter trace-sample-ratio, OTEL_TRACES_SAMPLER_ARG)")

# The load balancer's access logs go to a private bucket that forgets them, and that its region's log delivery may
# write to.
lb_attributes = {a["Key"]: a["Value"] for lb in of_type("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
                 for a in lb["Properties"].get("LoadBalancerAttributes", [])}
log_bucket = next(refs(lb_attributes.get("access_logs.s3.bucket", {})), None)
rule(lb_attributes.get("access_logs.s3.enabled") == "true" and log_bucket in resources,
     "the load balancer writes no access logs to a bucket of the stack")
if log_bucket in resources:
    bprops = resources[log_bucket]["Properties"]
    rule(any("ExpirationInDays" in r for r in bprops.get("LifecycleConfiguration", {}).get("Rules", [])),
         f"{log_bucket} keeps access logs forever: no expiration rule")
    rule(bprops.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [{}])[0]
         .get("ServerSideEncryptionByDefault", {}).get("SSEAlgorithm") == "AES256",
         f"{log_bucket} is not SSE-S3: load balancers deliver access logs to no other encryption")
    rule(all(bprops.get("PublicAccessBlockConfiguration", {}).get(k) for k in
             ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")),
         f"{log_bucket} does not block public access")
    policies = [r["Properties"] for r in of_type("AWS::S3::BucketPolicy").values()
                if log_bucket in set(refs(r["Properties"]["Bucket"]))]
    delivery = json.dumps(policies)
    rule("logdelivery.elasticloadbalancing.amazonaws.com" in delivery and "ElbLogAccounts" in delivery,
         f"{log_bucket}'s policy does not let the load balancer deliver, in old regions (ELB accounts) and new ones (service principal)")
    accounts = template.get("Mappings", {}).get("ElbLogAccounts", {})
    rule(accounts.get("us-east-1", {}).get("Account") == "127311923021" and len(accounts) >= 21,
         "the ELB log delivery accounts of the regions opened before August 2022 are not all mapped")

# The edge: an AWS WAF web ACL on the load balancer, on unless a parameter turns it off, limits each client
# address and runs the managed common rules, and blocks no image upload for its size (WAF sees 8 KB of a body).
UPLOAD_PATHS = ("/upload", "/upload-selfie", "/api/v1/images", "/api/v1/uploads", "/api/v1/uploads/0f3a/complete",
                "/api/v1/classify")
conditions = template.get("Conditions", {})


def statements_in(value, kind):
    """Every statement of a kind (e.g. NotStatement) anywhere inside a WAF statement."""
    if isinstance(value, dict):
        if kind in value:
            yield value[kind]
        for inner in value.values():
            yield from statements_in(inner, kind)
    elif isinstance(value, list):
        for inner in value:
            yield from statements_in(inner, kind)


def spares_uploads(statement):
    """True when a NotStatement inside it matches every upload route by a regular expression."""
    for negated in statements_in(statement, "NotStatement"):
        patterns = [r["RegexString"] for r in statements_in(negated, "RegexMatchStatement")]
        if patterns and all(any(re.search(p, path) for p in patterns) for path in UPLOAD_PATHS):
            return True
    return False


acls = of_type("AWS::WAFv2::WebACL")
rule(acls, "no AWS WAF web ACL: nothing at the edge stops one address flooding the public intake")
for name, acl in acls.items():
    props = acl["Properties"]
    cond = acl.get("Condition")
    switches = [p for p in refs(conditions.get(cond, {})) if p in parameters_of_template]
    rule(cond and switches and all(str(parameters_of_template[p].get("Default")) not in ("off", "false") for p in switches),
         f"{name} has no parameter to turn it off, or is off by default")
    associations = [a for a in of_type("AWS::WAFv2::WebACLAssociation").values()
                    if name in set(refs(a["Properties"]["WebACLArn"])) and "LoadBalancer" in set(refs(a["Properties"]["ResourceArn"]))]
    rule(props.get("Scope") == "REGIONAL" and associations and all(a.get("Condition") == cond for a in associations),
         f"{name} is not associated with the load balancer whenever it exists, so it filters nothing")
    acl_rules = props.get("Rules", [])
    per_ip = [r for r in acl_rules if "Block" in r.get("Action", {})
              and r["Statement"].get("RateBasedStatement", {}).get("AggregateKeyType") == "IP"
              and "ScopeDownStatement" not in r["Statement"]["RateBasedStatement"]]
    rule(per_ip, f"{name} has no rate-based rule blocking over a limit per client address on every request: one address can flood the service")
    groups = {r["Statement"].get("ManagedRuleGroupStatement", {}).get("Name"): r for r in acl_rules}
    common = groups.get("AWSManagedRulesCommonRuleSet")
    rule(common and common.get("OverrideAction") == {"None": {}},
         f"{name} does not enforce the AWS managed common rules (AWSManagedRulesCommonRuleSet, not counting only)")
    overrides = {o["Name"]: o["ActionToUse"] for o in (common or {}).get("Statement", {}).get("ManagedRuleGroupStatement", {}).get("RuleActionOverrides", [])}
    rule("Count" in overrides.get("SizeRestrictions_BODY", {}),
         f"{name}: the common rules' SizeRestrictions_BODY blocks every body over 8 KB, that is every image upload (override it to Count)")
    for r in acl_rules:
        if "core-rule-set:SizeRestrictions_Body" in json.dumps(r["Statement"]) and "Block" in r.get("Action", {}):
            rule(spares_uploads(r["Statement"]),
                 f"{name} {r['Name']} blocks bodies over 8 KB on the upload routes too, so every image upload")

# Notifications cannot become an unbounded bill, nor the alerts fall silent: the stack sets SNS's monthly SMS spend
# limit from a parameter, and an alarm pages the alarm e-mail before the limit is reached.
spend_limits = [n for n, r in resources.items()
                if (r["Type"].startswith("Custom::") or r["Type"] == "AWS::CloudFormation::CustomResource")
                and "MonthlySpendLimit" in r.get("Properties", {})]
rule(spend_limits, "no custom resource sets SNS's monthly SMS spend limit: an upload flood sends SMS until the bill, or the default limit, stops every alert for the month")
for name in spend_limits:
    props = resources[name]["Properties"]
    rule(set(refs(props["MonthlySpendLimit"])) & set(parameters_of_template),
         f"{name} sets a fixed SMS spend limit, not the stack's parameter")
    function = next(refs(props["ServiceToken"]), None)
    fprops = resources.get(function, {}).get("Properties", {})
    code = fprops.get("Code", {}).get("ZipFile", "")
    rule("set_sms_attributes" in code and "MonthlySpendLimit" in code and "cfnresponse.send" in code,
         f"{name}'s function {function} does not set MonthlySpendLimit and answer CloudFormation (the update would wait for it to time out, then fail)")
    frole = next(refs(fprops.get("Role", {})), None)
    fstatements = [s for p in resources.get(frole, {}).get("Properties", {}).get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    rule(any("sns:SetSMSAttributes" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]) for s in fstatements),
         f"{name}'s function may not call sns:SetSMSAttributes")
spend_alarms = [a["Properties"] for a in of_type("AWS::CloudWatch::Alarm").values()
                if a["Properties"].get("MetricName") == "SMSMonthToDateSpentUSD" and a["Properties"].get("Namespace") == "AWS/SNS"]
rule(spend_alarms and all(set(refs(a.get("AlarmActions", []))) & paged for a in spend_alarms),
     "no alarm on AWS/SNS SMSMonthToDateSpentUSD pages the alarm e-mail before SNS stops sending SMS for the month")
rule(all(set(refs(a.get("Threshold"))) & set(spend_limits) for a in spend_alarms),
     "the SMS spend alarm's threshold does not follow the limit the custom resource set")

# The pipeline's stack update can create what the template has: its CloudFormation role may act on every service
# the template's resources belong to (a new kind of resource would otherwise fail the update, access denied).
prefixes = {"ElasticLoadBalancingV2": "elasticloadbalancing"}
cfn_roles = {r for p in of_type("AWS::CodePipeline::Pipeline").values() for _, _, a in pipeline_actions(p)
             if a["ActionTypeId"]["Provider"] == "CloudFormation" for r in refs(a["Configuration"].get("RoleArn", {}))}
for role_name in cfn_roles:
    granted = [a for p in resources[role_name]["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]
               if s["Effect"] == "Allow" for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])]
    for kind in sorted({r["Type"] for r in resources.values()}):
        if kind.startswith("Custom::") or kind == "AWS::CloudFormation::CustomResource":
            ok = any(fnmatch.fnmatchcase("lambda:invokefunction", a.lower()) for a in granted)
            needed = "lambda:InvokeFunction"
        else:
            service = kind.split("::")[1]
            needed = prefixes.get(service, service.lower())
            ok = any(a.lower().split(":", 1)[0] == needed for a in granted)
        rule(ok, f"{role_name} has no {needed} rights for {kind}: the pipeline's stack update would fail on it")

for failure in failures:
    print(failure)
print(f"{checked} promises of the stack checked, {len(failures)} broken")
sys.exit(1 if failures else 0)
