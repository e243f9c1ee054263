"""deploy/terraform: every file parses, the founding document's figures hold, checkov is clean.

`terraform validate` cannot run here (no Terraform binary can be installed on these machines),
so the configuration is checked through python-hcl2's parse and these assertions.
"""

from __future__ import annotations

import json
import random
import re
import subprocess

import hcl2
import pytest

from fleetlib import TERRAFORM, find_tool, root_default, single, tf_files, tf_module, tool_env

FOUNDING_SUBNETS = {
    "10.0.1.0/24": ("ap-northeast-2a", "public"),
    "10.0.2.0/24": ("ap-northeast-2c", "public"),
    "10.0.10.0/24": ("ap-northeast-2a", "private"),  # reserved; the founding document names no AZ
    "10.0.20.0/24": ("ap-northeast-2a", "private"),
    "10.0.21.0/24": ("ap-northeast-2c", "private"),
}


def resolve(value, call: str):
    """A module argument's value as the root module sets it: var.X -> the call's X -> its default."""
    root = tf_module()
    for _ in range(3):
        if not isinstance(value, str):
            return value
        m = re.fullmatch(r"\$\{var\.(\w+)\}", value)
        if not m:
            return value
        if call:
            value = root.modules[call][m.group(1)]
            call = ""
        else:
            return root_default(m.group(1))
    return value


def unescape_hcl(text: str) -> str:
    return text.replace("\\\\", "\\").replace('\\"', '"')


# --- Parsing and pins ---------------------------------------------------------------------------


def test_every_tf_file_parses_with_python_hcl2():
    files = tf_files()
    assert len(files) >= 20, files
    for path in files:
        with path.open() as fh:
            assert hcl2.load(fh), path


def test_modules_are_split_as_planned():
    modules = tf_module().modules
    assert set(modules) == {"network", "data", "edge", "compute", "observability"}
    for name, call in modules.items():
        assert call["source"] == f"./modules/{name}"
        assert (TERRAFORM / "modules" / name / "variables.tf").exists()
        assert (TERRAFORM / "modules" / name / "outputs.tf").exists()


def test_provider_versions_are_pinned_as_the_founding_document():
    blocks = tf_module().terraform
    providers = single(single(blocks)["required_providers"])
    assert providers["aws"] == {"source": "hashicorp/aws", "version": "6.23.0"}
    assert providers["archive"] == {"source": "hashicorp/archive", "version": "2.7.1"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", providers["random"]["version"])  # exact pin too
    assert single(blocks)["required_version"].startswith(">=")


def test_every_variable_and_output_is_described():
    for path in sorted({p.parent for p in tf_files()}):
        module = tf_module(str(path.relative_to(TERRAFORM))) if path != TERRAFORM else tf_module()
        for name, body in module.variables.items():
            assert len(body.get("description", "")) > 10, f"{path.name}: variable {name}"
            assert "type" in body, f"{path.name}: variable {name} has no type"
        for name, body in module.outputs.items():
            assert len(body.get("description", "")) > 10, f"{path.name}: output {name}"


def test_root_variables_validate_their_inputs():
    variables = tf_module().variables
    validated = {n for n, body in variables.items() if body.get("validation")}
    for name in ("vpc_cidr", "subnets", "admin_ssh_cidrs", "acm_certificate_arn", "scaling_policy",
                 "waf_rate_window_seconds", "worker_min_size", "worker_max_size", "dlq_max_receive_count",
                 "redis_engine_version", "region"):
        assert name in validated, name
    assert len(validated) >= 20


# --- Network ------------------------------------------------------------------------------------


def test_vpc_and_the_five_subnets():
    assert root_default("vpc_cidr") == "10.0.0.0/16"
    assert root_default("region") == "ap-northeast-2"
    subnets = root_default("subnets")
    assert {s["cidr"]: (s["az"], s["tier"]) for s in subnets.values()} == FOUNDING_SUBNETS
    network = tf_module("modules/network")
    subnet = network.resource("aws_subnet", "this")
    assert subnet["for_each"] == "${var.subnets}"
    assert subnet["cidr_block"] == "${each.value.cidr}"
    assert subnet["availability_zone"] == "${each.value.az}"
    assert subnet["map_public_ip_on_launch"] is False
    assert network.resource("aws_vpc", "this")["cidr_block"] == "${var.vpc_cidr}"
    assert tf_module().modules["network"]["vpc_cidr"] == "${var.vpc_cidr}"


def test_internet_gateway_nat_and_routes():
    network = tf_module("modules/network")
    network.resource("aws_internet_gateway", "this")
    nat = network.resource("aws_nat_gateway", "this")
    assert nat["subnet_id"] == "${aws_subnet.this[var.nat_subnet_key].id}"
    assert tf_module().modules["network"]["nat_subnet_key"] == "public_a"
    public = network.resource("aws_route", "public_internet")
    assert public["destination_cidr_block"] == "0.0.0.0/0"
    assert public["gateway_id"] == "${aws_internet_gateway.this.id}"
    private = network.resource("aws_route", "private_nat")
    assert private["destination_cidr_block"] == "0.0.0.0/0"
    assert private["nat_gateway_id"] == "${aws_nat_gateway.this.id}"


def test_gateway_endpoints_for_s3_and_dynamodb():
    network = tf_module("modules/network")
    for name, service in (("s3", "s3"), ("dynamodb", "dynamodb")):
        endpoint = network.resource("aws_vpc_endpoint", name)
        assert endpoint["vpc_endpoint_type"] == "Gateway"
        assert endpoint["service_name"].endswith(f".{service}")
        assert "aws_route_table.private.id" in str(endpoint["route_table_ids"])


def _rules(kind: str) -> dict[str, dict]:
    return tf_module("modules/network").resources[f"aws_vpc_security_group_{kind}_rule"]


def test_security_groups_open_the_founding_documents_ports_only():
    ingress = _rules("ingress")
    by_sg: dict[str, set] = {}
    for name, rule in ingress.items():
        sg = re.search(r"aws_security_group\.(\w+)\.id", rule["security_group_id"]).group(1)
        source = rule.get("cidr_ipv4") or re.search(r"aws_security_group\.(\w+)\.id", rule["referenced_security_group_id"]).group(1)
        by_sg.setdefault(sg, set()).add((rule["from_port"], rule["to_port"], source))
        assert rule["ip_protocol"] == "tcp", name
        assert rule["description"], name
    assert by_sg["alb"] == {(80, 80, "0.0.0.0/0"), (443, 443, "0.0.0.0/0")}
    assert by_sg["controller"] == {(8080, 8080, "alb"), (22, 22, "${each.value}")}
    assert by_sg["ai"] == {(11434, 11434, "worker"), (22, 22, "controller")}
    assert by_sg["redis"] == {(6379, 6379, "controller"), (6379, 6379, "worker")}
    assert "worker" not in by_sg  # workers: egress only


def test_no_ssh_from_the_internet():
    ingress = _rules("ingress")
    for name, rule in ingress.items():
        if rule["from_port"] <= 22 <= rule["to_port"]:
            assert rule.get("cidr_ipv4") in (None, "${each.value}"), name
    ssh = ingress["controller_ssh"]
    assert ssh["for_each"] == "${toset(var.admin_ssh_cidrs)}"
    assert tf_module().modules["network"]["admin_ssh_cidrs"] == "${var.admin_ssh_cidrs}"
    assert root_default("admin_ssh_cidrs") == []
    assert "/0" in single(tf_module().variables["admin_ssh_cidrs"]["validation"])["condition"]
    assert ingress["ai_ssh_from_controller"]["count"] == "${length(var.admin_ssh_cidrs) > 0 ? 1 : 0}"


def test_ssm_session_manager_replaces_ssh():
    compute = tf_module("modules/compute")
    attach = compute.resource("aws_iam_role_policy_attachment", "ssm")
    assert attach["policy_arn"].endswith("AmazonSSMManagedInstanceCore")
    assert set(attach["for_each"]) == {"controller", "worker", "ai"}


# --- Edge ---------------------------------------------------------------------------------------


def test_alb_listeners_target_group_and_health_check():
    edge = tf_module("modules/edge")
    alb = edge.resource("aws_lb", "this")
    assert alb["internal"] is False and alb["load_balancer_type"] == "application"
    assert alb["drop_invalid_header_fields"] is True
    assert edge.resource("aws_lb_listener", "http")["port"] == 80
    https = edge.resource("aws_lb_listener", "https")
    assert https["port"] == 443 and https["certificate_arn"] == "${var.acm_certificate_arn}"
    assert https["count"] == "${local.https ? 1 : 0}"
    assert tf_module().modules["edge"]["acm_certificate_arn"] == "${var.acm_certificate_arn}"
    group = edge.resource("aws_lb_target_group", "api")
    assert group["port"] == 8080 and group["protocol"] == "HTTP"
    health = single(group["health_check"])
    assert health["path"] == LIVENESS_ROUTE and health["matcher"] == "200"
    assert len(tf_module().modules["edge"]["public_subnet_ids"]) == 2


def test_two_controllers_in_two_azs_behind_the_alb():
    compute = tf_module("modules/compute")
    controller = compute.resource("aws_instance", "controller")
    assert controller["for_each"] == "${var.controller_subnet_ids}"
    call = tf_module().modules["compute"]
    assert set(call["controller_subnet_ids"]) == {"public_a", "public_c"}
    azs = {root_default("subnets")[k]["az"] for k in call["controller_subnet_ids"]}
    assert azs == {"ap-northeast-2a", "ap-northeast-2c"}
    assert resolve(controller["instance_type"], "compute") == "t3.small"
    attachment = compute.resource("aws_lb_target_group_attachment", "controller")
    assert attachment["port"] == 8080


def test_instances_require_imdsv2_and_encrypt_volumes():
    compute = tf_module("modules/compute")
    for name in ("controller", "ai"):
        instance = compute.resource("aws_instance", name)
        assert single(instance["metadata_options"])["http_tokens"] == "required"
        assert single(instance["root_block_device"])["encrypted"] is True
    template = compute.resource("aws_launch_template", "worker")
    assert single(template["metadata_options"])["http_tokens"] == "required"
    assert single(single(template["block_device_mappings"])["ebs"])["encrypted"] is True


# --- Workers and scaling ------------------------------------------------------------------------


def test_worker_group_is_2_2_5_in_the_two_private_data_subnets():
    compute = tf_module("modules/compute")
    asg = compute.resource("aws_autoscaling_group", "worker")
    assert resolve(asg["min_size"], "compute") == 2
    assert resolve(asg["desired_capacity"], "compute") == 2
    assert resolve(asg["max_size"], "compute") == 5
    call = tf_module().modules["compute"]
    assert "private_a" in call["worker_subnet_ids"][0] and "private_c" in call["worker_subnet_ids"][1]
    assert {root_default("subnets")[k]["cidr"] for k in ("private_a", "private_c")} == {"10.0.20.0/24", "10.0.21.0/24"}
    assert resolve(compute.resource("aws_launch_template", "worker")["instance_type"], "compute") == "t3.small"
    refresh = single(asg["instance_refresh"])
    assert refresh["strategy"] == "Rolling"
    hook = single(asg["initial_lifecycle_hook"])
    assert hook["lifecycle_transition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert resolve(asg["default_cooldown"], "compute") == 300
    assert "desired_capacity" in str(single(asg["lifecycle"])["ignore_changes"])


def test_step_scaling_alarms_and_policies_match_the_founding_document():
    compute = tf_module("modules/compute")
    assert root_default("scaling_policy") == "step"
    high = compute.resource("aws_cloudwatch_metric_alarm", "sqs_high")
    low = compute.resource("aws_cloudwatch_metric_alarm", "sqs_low")
    for alarm in (high, low):
        assert alarm["namespace"] == "AWS/SQS"
        assert alarm["metric_name"] == "ApproximateNumberOfMessagesVisible"
        assert alarm["count"] == "${local.step_scaling ? 1 : 0}"
    assert high["alarm_name"] == "${var.name}-sqs-high" and low["alarm_name"] == "${var.name}-sqs-low"
    assert tf_module().modules["compute"]["name"] == "${var.project}" and root_default("project") == "nanogrid"
    assert resolve(high["threshold"], "compute") == 10
    assert high["comparison_operator"] == "GreaterThanOrEqualToThreshold"
    assert resolve(low["threshold"], "compute") == 0
    assert low["comparison_operator"] == "LessThanOrEqualToThreshold"
    period = resolve(high["period"], "compute")
    assert period == 60 and resolve(low["period"], "compute") == 60
    assert resolve(high["evaluation_periods"], "compute") == 1
    assert resolve(low["evaluation_periods"], "compute") * period == 180  # 3 minutes
    out = compute.resource("aws_autoscaling_policy", "scale_out")
    scale_in = compute.resource("aws_autoscaling_policy", "scale_in")
    assert out["scaling_adjustment"] == 1 and scale_in["scaling_adjustment"] == -1
    for policy in (out, scale_in):
        assert policy["policy_type"] == "SimpleScaling"  # the only type that honours a cooldown
        assert resolve(policy["cooldown"], "compute") == 300
    assert high["alarm_actions"] == ["${aws_autoscaling_policy.scale_out[0].arn}"]
    assert low["alarm_actions"] == ["${aws_autoscaling_policy.scale_in[0].arn}"]


def test_target_tracking_on_the_published_backlog_metric():
    compute = tf_module("modules/compute")
    policy = compute.resource("aws_autoscaling_policy", "backlog_target")
    assert policy["policy_type"] == "TargetTrackingScaling"
    assert policy["count"] == "${local.target_scaling ? 1 : 0}"
    config = single(policy["target_tracking_configuration"])
    assert resolve(config["target_value"], "compute") == 8
    metric = single(config["customized_metric_specification"])
    assert resolve(metric["namespace"], "compute") == "NanoGrid"
    assert resolve(metric["metric_name"], "compute") == "BacklogPerInstance"
    assert metric["statistic"] == "Average"
    assert single(metric["metric_dimension"])["name"] == "QueueName"
    assert "target" in single(tf_module().variables["scaling_policy"]["validation"])["condition"]


# --- Data ---------------------------------------------------------------------------------------


def test_task_queue_with_dead_letter_redrive():
    data = tf_module("modules/data")
    assert root_default("task_queue_name") == "nanogrid-task-queue"
    queue = data.resource("aws_sqs_queue", "tasks")
    assert queue["name"] == "${var.task_queue_name}"
    assert tf_module().modules["data"]["task_queue_name"] == "${var.task_queue_name}"
    assert "deadLetterTargetArn = aws_sqs_queue.dlq.arn" in queue["redrive_policy"]
    assert re.search(r"maxReceiveCount\s*=\s*var.dlq_max_receive_count", queue["redrive_policy"])
    assert root_default("dlq_max_receive_count") == 3
    assert queue["sqs_managed_sse_enabled"] is True
    assert data.resource("aws_sqs_queue", "dlq")["name"] == "${var.task_queue_name}-dlq"


def test_tables_are_on_demand_with_the_documented_keys():
    from nanogrid.config import Settings

    data = tf_module("modules/data")
    functions = data.resource("aws_dynamodb_table", "functions")
    jobs = data.resource("aws_dynamodb_table", "jobs")
    keys = data.resource("aws_dynamodb_table", "keys")
    assert root_default("functions_table_name") == "NanoGridFunctions"
    assert root_default("jobs_table_name") == "NanoGridJobs"
    assert root_default("keys_table_name") == "NanoGridApiKeys" == Settings.keys_table
    assert tf_module().modules["data"]["keys_table_name"] == "${var.keys_table_name}"
    assert tf_module().modules["compute"]["keys_table"] == "${module.data.keys_table}"
    # Keys and indexes as the code declares them (nanogrid/storage/__init__.py, provisioned the same way
    # by nanogrid/storage/provision.py).
    from nanogrid.storage import TABLES
    from nanogrid.storage.dynamodb import index_attributes

    for table, spec in ((functions, TABLES["functions"]), (jobs, TABLES["jobs"]), (keys, TABLES["keys"])):
        assert table["billing_mode"] == "PAY_PER_REQUEST"
        assert table["hash_key"] == spec.key
        index_keys = [name for index in spec.indexes for name in index_attributes(index)]
        assert sorted(a["name"] for a in table["attribute"]) == sorted([spec.key, *index_keys])
        assert all(a["type"] == "S" for a in table["attribute"])
        gsis = {g["name"]: g for g in table.get("global_secondary_index", [])}
        assert set(gsis) == set(spec.indexes)
        for index, gsi in gsis.items():
            assert (gsi["hash_key"], gsi["range_key"]) == index_attributes(index)
            assert gsi["projection_type"] == "ALL"  # a query returns whole documents
        if spec.expires:
            from nanogrid.storage.dynamodb import TTL_ATTRIBUTE

            assert single(table["ttl"]) == {"attribute_name": TTL_ATTRIBUTE, "enabled": True}
        else:
            assert "ttl" not in table
        assert single(table["point_in_time_recovery"])["enabled"] is True
        assert single(table["server_side_encryption"])["enabled"] is True
        assert table["deletion_protection_enabled"] is True
    # The tables and key attributes the code uses on DynamoDB (nanogrid/storage/__init__.py).
    from nanogrid import storage

    settings = Settings(storage="aws")
    used = {(t.table_name, t.key_name) for t in (storage.function_table(settings), storage.job_table(settings),
                                                 storage.key_table(settings))}
    assert used == {("NanoGridFunctions", "functionId"), ("NanoGridJobs", "jobId"), ("NanoGridApiKeys", "keyId")}


def test_redis_7_1_on_one_small_node():
    redis = tf_module("modules/data").resource("aws_elasticache_replication_group", "this")
    assert resolve(redis["engine_version"], "data") == "7.1"
    assert resolve(redis["node_type"], "data") == "cache.t3.micro"
    assert redis["port"] == 6379 and redis["num_cache_clusters"] == 1
    assert redis["transit_encryption_enabled"] is True and redis["at_rest_encryption_enabled"] is True
    assert redis["replication_group_id"] == "${var.name}-redis"
    group = tf_module("modules/data").resource("aws_elasticache_parameter_group", "this")
    assert single(group["parameter"]) == {"name": "maxmemory-policy", "value": "noeviction"}


def test_buckets_are_versioned_encrypted_and_private():
    data = tf_module("modules/data")
    assert set(data.modules) == {"code_bucket", "user_data_bucket"}
    assert data.modules["user_data_bucket"]["bucket_name"] == "${var.user_data_bucket_prefix}-${var.account_id}"
    assert root_default("user_data_bucket_prefix") == "nanogrid-user-data"
    assert root_default("code_bucket_name") == "nanogrid-code-bucket"
    for call in data.modules.values():
        assert call["source"] == "../bucket"
    bucket = tf_module("modules/bucket")
    versioning = bucket.resource("aws_s3_bucket_versioning", "this")
    assert single(versioning["versioning_configuration"])["status"] == "Enabled"
    sse = single(bucket.resource("aws_s3_bucket_server_side_encryption_configuration", "this")["rule"])
    assert single(sse["apply_server_side_encryption_by_default"])["sse_algorithm"] == "aws:kms"
    block = bucket.resource("aws_s3_bucket_public_access_block", "this")
    assert all(block[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
    policy = single(bucket.data["aws_iam_policy_document"]["tls_only"]["statement"])
    assert policy["effect"] == "Deny" and single(policy["condition"])["variable"] == "aws:SecureTransport"


def test_gcp_credentials_secret():
    data = tf_module("modules/data")
    secret = data.resource("aws_secretsmanager_secret", "gcp_credentials")
    assert secret["name"] == "${var.gcp_credentials_secret_name}"
    assert root_default("gcp_credentials_secret_name") == "nanogrid/gcp-credentials"
    # The GCP key's value is never in Terraform: an operator puts it.
    versions = data.resources.get("aws_secretsmanager_secret_version", {})
    assert all("gcp" not in body["secret_id"] for body in versions.values())


def test_ai_node_serves_ollama_to_the_workers_only():
    compute = tf_module("modules/compute")
    ai = compute.resource("aws_instance", "ai")
    assert resolve(ai["instance_type"], "compute") == "t3.large"
    assert tf_module().modules["compute"]["ai_subnet_id"] == '${module.network.subnet_ids["private_a"]}'
    assert compute.locals["ai_endpoint"] == "http://${aws_instance.ai.private_ip}:11434"
    ingress = _rules("ingress")["ai_ollama"]
    assert ingress["from_port"] == ingress["to_port"] == 11434
    assert ingress["referenced_security_group_id"] == "${aws_security_group.worker.id}"


def test_sns_topic_for_operations_alarms():
    observability = tf_module("modules/observability")
    topic = observability.resource("aws_sns_topic", "alarms")
    assert topic["kms_master_key_id"]
    dlq_alarm = observability.resource("aws_cloudwatch_metric_alarm", "dlq_not_empty")
    assert dlq_alarm["alarm_actions"] == ["${aws_sns_topic.alarms.arn}"]


# --- WAF ----------------------------------------------------------------------------------------


def _waf_rules() -> dict[str, dict]:
    acl = tf_module("modules/edge").resource("aws_wafv2_web_acl", "this")
    return {rule["name"]: rule for rule in acl["rule"]}


LIVENESS_ROUTE = "/health/live"


def test_the_load_balancers_check_is_an_open_route_of_the_api(tmp_path):
    """The ALB's health check asks a route the API serves without a key: the API's own liveness."""
    from nanogrid.api import auth, create_app
    from nanogrid.config import Settings

    app = create_app(Settings(data_dir=tmp_path))
    [endpoint] = [rule.endpoint for rule in app.url_map.iter_rules() if rule.rule == LIVENESS_ROUTE]
    assert endpoint in auth.OPEN_ENDPOINTS


def test_metrics_is_refused_at_the_edge(tmp_path):
    """The API's GET /metrics has no key and no rate limit (a plain app route for a scraper on the
    private network): the ALB answers it 403 on the listener that forwards to the controllers, and
    WAF refuses it however the path is spelled (percent-encoded, doubled slashes)."""
    from nanogrid.api import create_app
    from nanogrid.config import Settings

    app = create_app(Settings(data_dir=tmp_path))
    [route] = [rule.rule for rule in app.url_map.iter_rules() if rule.endpoint == "metrics"]
    edge = tf_module("modules/edge")
    assert edge.locals["metrics_path"] == route == "/metrics"
    rule = edge.resource("aws_lb_listener_rule", "metrics_private")
    # The forwarding listener: HTTPS when a certificate is set (then HTTP only redirects), else HTTP.
    assert rule["listener_arn"] == "${local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http.arn}"
    assert "count" not in rule and "for_each" not in rule
    paths = single(single(rule["condition"])["path_pattern"])["values"]
    assert set(paths) == {"${local.metrics_path}", "${local.metrics_path}/*"}
    action = single(rule["action"])
    assert action["type"] == "fixed-response"
    assert single(action["fixed_response"])["status_code"] == "403"
    other_rules = [n for n in edge.resources["aws_lb_listener_rule"] if n != "metrics_private"]
    assert not other_rules or all(edge.resources["aws_lb_listener_rule"][n]["priority"] > rule["priority"]
                                  for n in other_rules)
    waf = _waf_rules()["block-metrics"]
    response = single(single(single(waf["action"])["block"])["custom_response"])
    assert response["response_code"] == 403
    match = single(single(waf["statement"])["byte_match_statement"])
    assert match["search_string"] == "${local.metrics_path}"
    assert match["positional_constraint"] == "STARTS_WITH"
    assert "uri_path" in single(match["field_to_match"])
    transformations = sorted(match["text_transformation"], key=lambda t: t["priority"])
    assert [t["type"] for t in transformations] == ["URL_DECODE", "NORMALIZE_PATH"]


def test_waf_rate_rule_is_1000_per_300_s_per_ip_answering_429_with_retry_after():
    rule = _waf_rules()["rate-limit-per-ip"]
    statement = single(single(rule["statement"])["rate_based_statement"])
    assert resolve(statement["limit"], "edge") == 1000
    assert resolve(statement["evaluation_window_sec"], "edge") == 300
    assert statement["aggregate_key_type"] == "IP"
    response = single(single(single(rule["action"])["block"])["custom_response"])
    assert response["response_code"] == 429
    header = single(response["response_header"])
    assert header["name"] == "Retry-After"
    assert header["value"] == "${tostring(var.waf_rate_window_seconds)}"


def test_waf_managed_rule_groups():
    names = set()
    for rule in _waf_rules().values():
        statement = single(rule["statement"])
        if "managed_rule_group_statement" in statement:
            group = single(statement["managed_rule_group_statement"])
            assert group["vendor_name"] == "AWS"
            names.add(group["name"])
    assert names == {"AWSManagedRulesSQLiRuleSet", "AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"}


def test_waf_body_rules_do_not_block_python_uploads():
    edge = tf_module("modules/edge")
    rules = _waf_rules()
    # The body-inspecting rules of the core and SQLi sets only count ...
    assert set(edge.locals["crs_body_rules"]) >= {"SizeRestrictions_BODY", "CrossSiteScripting_BODY"}
    assert set(edge.locals["sqli_body_rules"]) == {"SQLi_BODY", "SQLiExtendedPatterns_BODY"}
    for name, local in (("aws-common", "crs_body_rules"), ("aws-sqli", "sqli_body_rules")):
        group = single(single(rules[name]["statement"])["managed_rule_group_statement"])
        override = single(group["dynamic"])["rule_action_override"]
        assert override["for_each"] == f"${{local.{local}}}"
        assert "count" in single(single(override["content"])["action_to_use"])
    # ... the code routes get a label ...
    label_rule = rules["label-code-routes"]
    assert single(label_rule["rule_label"])["name"] == "${local.code_route_label}"
    assert "count" in single(label_rule["action"])
    assert root_default("code_route_prefix") == "/functions"
    # ... and their matches are blocked everywhere else, after the managed groups ran.
    block_rule = rules["block-body-matches-outside-code-routes"]
    assert "block" in single(block_rule["action"])
    text = json.dumps(block_rule)
    assert "local.body_rule_labels" in text and "not_statement" in text and "local.code_route_label" in text
    assert block_rule["priority"] > max(rules[n]["priority"] for n in ("aws-common", "aws-sqli", "label-code-routes"))
    labels = edge.locals["body_rule_labels"]
    assert "core-rule-set" in labels and "sql-database" in labels


def test_waf_body_size_rule_blocks_content_length_over_1_gib():
    edge = tf_module("modules/edge")
    assert root_default("waf_max_body_bytes") == 1073741824
    pattern = re.compile(unescape_hcl(edge.locals["content_length_over_1gib"]))
    limit = 1073741824
    for value in (0, 1, 8192, 10**9, limit - 1, limit):
        assert not pattern.match(str(value)), value
    for value in (limit + 1, limit + 7, 1073741830, 1073741900, 1073750000, 1080000000, 2 * 10**9, 9999999999, 10**10, 10**15):
        assert pattern.match(str(value)), value
    rng = random.Random(7)
    for _ in range(20000):
        value = rng.randrange(0, 3 * limit)
        assert bool(pattern.match(str(value))) == (value > limit), value
    rule = _waf_rules()["body-size-limit"]
    response = single(single(single(rule["action"])["block"])["custom_response"])
    assert response["response_code"] == 413


# --- checkov ------------------------------------------------------------------------------------


def test_checkov_reports_no_failed_checks_and_every_skip_has_a_reason():
    checkov = find_tool("checkov", "CHECKOV")
    proc = subprocess.run(
        [checkov, "--config-file", str(TERRAFORM / ".checkov.yaml"), "-d", str(TERRAFORM), "-o", "json"],
        capture_output=True, text=True, timeout=300, env=tool_env(),
    )
    assert proc.stdout.strip(), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    terraform = [r for r in reports if r.get("check_type") == "terraform"]
    assert terraform, [r.get("check_type") for r in reports]
    summary = terraform[0]["summary"]
    failed = terraform[0]["results"]["failed_checks"]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 200
    assert not failed, "\n".join(f"{f['check_id']} {f['resource']} {f['file_path']}" for f in failed)
    skipped = terraform[0]["results"]["skipped_checks"]
    assert skipped, "expected the documented skips"
    for check in skipped:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) >= 30, f"{check['check_id']} on {check['resource']} is skipped without a reason"
    documented = (TERRAFORM / "README.md").read_text()
    for check_id in {c["check_id"] for c in skipped}:
        assert check_id in documented, f"{check_id} is skipped but not listed in deploy/terraform/README.md"


@pytest.mark.parametrize("path", ["versions.tf", "modules/compute/iam.tf"])
def test_files_are_plain_text(path):
    assert (TERRAFORM / path).read_text().isascii()
