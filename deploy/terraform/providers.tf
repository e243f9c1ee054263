provider "aws" {
  region = var.region

  default_tags {
    tags = merge(
      {
        Project   = var.project
        ManagedBy = "terraform"
      },
      var.extra_tags,
    )
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
