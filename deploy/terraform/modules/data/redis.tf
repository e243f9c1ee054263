# Job state and the Celery result backend: ElastiCache Redis 7.1, one cache.t3.micro node in
# AZ a. Encrypted in transit and at rest, with an AUTH token kept in Secrets Manager.

resource "aws_elasticache_subnet_group" "this" {
  name       = "${var.name}-redis"
  subnet_ids = var.redis_subnet_ids
}

resource "aws_elasticache_parameter_group" "this" {
  name   = "${var.name}-redis7"
  family = "redis7"

  # Writes fail loudly instead of job states silently vanishing under memory pressure.
  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

resource "random_password" "redis_auth" {
  length  = 48
  special = false
}

resource "aws_elasticache_replication_group" "this" {
  #checkov:skip=CKV_AWS_191:Encrypted at rest and in transit with the AWS managed key; a customer managed key adds cost and key administration for no gain here.
  #checkov:skip=CKV2_AWS_50:The founding document runs one cache.t3.micro node; job state is also written to DynamoDB, the source of truth, and clients re-read it after a reconnect.
  replication_group_id = "${var.name}-redis"
  description          = "NanoGrid job state and Celery results"
  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = 6379
  num_cache_clusters   = 1
  parameter_group_name = aws_elasticache_parameter_group.this.name
  subnet_group_name    = aws_elasticache_subnet_group.this.name
  security_group_ids   = [var.redis_security_group_id]

  preferred_cache_cluster_azs = [var.redis_az]
  automatic_failover_enabled  = false
  multi_az_enabled            = false

  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result

  auto_minor_version_upgrade = true
  snapshot_retention_limit   = 1
  apply_immediately          = false

  tags = { Name = "${var.name}-redis" }
}
