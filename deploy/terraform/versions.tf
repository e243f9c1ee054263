terraform {
  # The founding document asks for Terraform >= 1.0; 1.5 is needed for the variable
  # validations that check list lengths and CIDR formats with can() and alltrue().
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "6.23.0"
    }
    # Pinned as in the founding document; kept so the lock file matches the original stack.
    archive = {
      source  = "hashicorp/archive"
      version = "2.7.1"
    }
    # Generates the Redis AUTH token (stored in Secrets Manager, never in the repository).
    random = {
      source  = "hashicorp/random"
      version = "3.7.2"
    }
  }
}
