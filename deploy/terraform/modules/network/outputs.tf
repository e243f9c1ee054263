output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "subnet_ids" {
  description = "Subnet IDs by key (public_a, public_c, private_reserved, private_a, private_c)."
  value       = { for k, s in aws_subnet.this : k => s.id }
}

output "nat_gateway_id" {
  description = "ID of the NAT gateway."
  value       = aws_nat_gateway.this.id
}

output "security_group_ids" {
  description = "Security group IDs by role: alb, controller, worker, ai, redis."
  value = {
    alb        = aws_security_group.alb.id
    controller = aws_security_group.controller.id
    worker     = aws_security_group.worker.id
    ai         = aws_security_group.ai.id
    redis      = aws_security_group.redis.id
  }
}

output "flow_log_group" {
  description = "Log group of the VPC flow logs."
  value       = aws_cloudwatch_log_group.flow_logs.name
}
