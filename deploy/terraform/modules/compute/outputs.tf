output "controller_instance_ids" {
  description = "Controller instance IDs by subnet key."
  value       = { for k, i in aws_instance.controller : k => i.id }
}

output "controller_private_ips" {
  description = "Controller private IPs by subnet key."
  value       = { for k, i in aws_instance.controller : k => i.private_ip }
}

output "ai_node_private_ip" {
  description = "Private IP of the AI node."
  value       = aws_instance.ai.private_ip
}

output "ai_endpoint" {
  description = "Ollama endpoint the workers use (AI_ENDPOINT)."
  value       = local.ai_endpoint
}

output "worker_asg_name" {
  description = "Name of the worker Auto Scaling group."
  value       = aws_autoscaling_group.worker.name
}

output "worker_launch_template_id" {
  description = "ID of the worker launch template."
  value       = aws_launch_template.worker.id
}

output "role_arns" {
  description = "Instance role ARNs: controller, worker, ai."
  value = {
    controller = aws_iam_role.controller.arn
    worker     = aws_iam_role.worker.arn
    ai         = aws_iam_role.ai.arn
  }
}

output "ansible_vars" {
  description = "Deployment values for the Ansible inventory (group_vars/all.yml) when pushing instead of pulling."
  value       = local.common_vars
}
