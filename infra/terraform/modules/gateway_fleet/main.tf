# gateway_fleet: nginx in front of N `cmg serve` replicas per host, plus RQ workers and one
# scheduler, installed over SSH as systemd units. Three phases, in order on every apply:
#   1. install  (every host)      upload rendered files, pip install, check the secrets file
#   2. migrate  (scheduler host)  cmg migrate as the schema owner
#   3. activate (every host)      rolling restart of the replicas, workers, nginx reload
# Every nginx fronts every replica of the fleet (private IPs), so any host can take
# traffic from DNS or a load balancer.

locals {
  host_names     = sort(keys(var.hosts))
  scheduler_host = var.scheduler_host != "" ? var.scheduler_host : local.host_names[0]
  stage_dir      = "/tmp/cmg-deploy"
  venv_dir       = "/opt/cmg/venv"
  env_file       = "/etc/cmg/cmg.env"
  listen_port    = var.listen_port != null ? var.listen_port : (var.tls_enabled ? 443 : 80)

  gateway_ports = [for i in range(var.replicas_per_host) : var.gateway_base_port + i]
  worker_ports  = [for i in range(var.workers_per_host) : var.worker_metrics_base_port + i]

  upstreams = flatten([
    for name in local.host_names : [
      for port in local.gateway_ports : "${var.hosts[name].private_ip}:${port}"
    ]
  ])

  # The same template the compose file and the Python tests render (infra/nginx).
  nginx_conf = templatefile("${path.module}/../../../nginx/gateway.conf.tftpl", {
    upstreams     = local.upstreams
    listen_port   = local.listen_port
    server_name   = var.domain
    tls_enabled   = var.tls_enabled
    tls_cert_path = var.tls_cert_path
    tls_key_path  = var.tls_key_path
    metrics_allow = var.metrics_allow
    admin_allow   = var.admin_allow
    max_body      = "${var.max_body_mib}m"
  })

  unit_vars = {
    venv_dir         = local.venv_dir
    env_file         = local.env_file
    secrets_env_file = var.secrets_env_file
  }
  units = {
    "cmg@.service"          = templatefile("${path.module}/templates/cmg@.service.tftpl", local.unit_vars)
    "cmg-worker@.service"   = templatefile("${path.module}/templates/cmg-worker@.service.tftpl", local.unit_vars)
    "cmg-scheduler.service" = templatefile("${path.module}/templates/cmg-scheduler.service.tftpl", local.unit_vars)
  }

  env_files = {
    for name in local.host_names : name => templatefile("${path.module}/templates/cmg.env.tftpl", {
      private_ip          = var.hosts[name].private_ip
      uvicorn_workers     = var.uvicorn_workers
      max_body_bytes      = var.max_body_mib * 1048576
      log_level           = var.log_level
      openrouter_base_url = var.openrouter_base_url
      providers_file      = var.providers_file
      has_providers_file  = var.providers_file != ""
    })
  }

  deploy_scripts = {
    for name in local.host_names : name => templatefile("${path.module}/templates/deploy.sh.tftpl", {
      host_name        = name
      private_ip       = var.hosts[name].private_ip
      stage_dir        = local.stage_dir
      venv_dir         = local.venv_dir
      env_file         = local.env_file
      cmg_package      = var.cmg_package
      pip_extra_args   = var.pip_extra_args
      gateway_ports    = local.gateway_ports
      worker_ports     = local.worker_ports
      run_scheduler    = name == local.scheduler_host
      secrets_env_file = var.secrets_env_file
      upload_secrets   = var.secrets_source_path != ""
      required_secrets = var.required_secrets
      migrate_env_file = var.migrate_env_file
    })
  }

  secrets_hash = var.secrets_source_path != "" ? filemd5(var.secrets_source_path) : ""
}

resource "null_resource" "install" {
  for_each = var.hosts

  triggers = {
    nginx_conf = sha256(local.nginx_conf)
    units      = sha256(jsonencode(local.units))
    env_file   = sha256(local.env_files[each.key])
    deploy     = sha256(local.deploy_scripts[each.key])
    package    = var.cmg_package
    secrets    = local.secrets_hash
  }

  connection {
    type        = "ssh"
    host        = each.value.ssh_host
    port        = var.ssh_port
    user        = var.ssh_user
    private_key = var.ssh_private_key_path != "" ? file(pathexpand(var.ssh_private_key_path)) : null
    agent       = var.ssh_private_key_path == ""
  }

  provisioner "remote-exec" {
    inline = ["rm -rf ${local.stage_dir} && mkdir -m 0700 ${local.stage_dir}"]
  }

  provisioner "file" {
    content     = local.nginx_conf
    destination = "${local.stage_dir}/cmg-gateway.conf"
  }

  provisioner "file" {
    content     = local.units["cmg@.service"]
    destination = "${local.stage_dir}/cmg@.service"
  }

  provisioner "file" {
    content     = local.units["cmg-worker@.service"]
    destination = "${local.stage_dir}/cmg-worker@.service"
  }

  provisioner "file" {
    content     = local.units["cmg-scheduler.service"]
    destination = "${local.stage_dir}/cmg-scheduler.service"
  }

  provisioner "file" {
    content     = local.env_files[each.key]
    destination = "${local.stage_dir}/cmg.env"
  }

  provisioner "file" {
    content     = local.deploy_scripts[each.key]
    destination = "${local.stage_dir}/deploy.sh"
  }

  # Provisioner arguments never enter the state. Without secrets_source_path a placeholder
  # is uploaded and ignored by deploy.sh.
  provisioner "file" {
    content     = var.secrets_source_path != "" ? file(var.secrets_source_path) : "# not managed by Terraform\n"
    destination = "${local.stage_dir}/secrets.env"
  }

  provisioner "remote-exec" {
    inline = ["sh ${local.stage_dir}/deploy.sh install"]
  }
}

resource "null_resource" "migrate" {
  count = var.migrate_env_file != "" ? 1 : 0

  triggers = {
    install = null_resource.install[local.scheduler_host].id
  }

  connection {
    type        = "ssh"
    host        = var.hosts[local.scheduler_host].ssh_host
    port        = var.ssh_port
    user        = var.ssh_user
    private_key = var.ssh_private_key_path != "" ? file(pathexpand(var.ssh_private_key_path)) : null
    agent       = var.ssh_private_key_path == ""
  }

  provisioner "remote-exec" {
    inline = ["sh ${local.stage_dir}/deploy.sh migrate"]
  }
}

resource "null_resource" "activate" {
  for_each = var.hosts

  triggers = {
    install = null_resource.install[each.key].id
  }

  # Schema first, then new code.
  depends_on = [null_resource.migrate]

  connection {
    type        = "ssh"
    host        = each.value.ssh_host
    port        = var.ssh_port
    user        = var.ssh_user
    private_key = var.ssh_private_key_path != "" ? file(pathexpand(var.ssh_private_key_path)) : null
    agent       = var.ssh_private_key_path == ""
  }

  provisioner "remote-exec" {
    inline = ["sh ${local.stage_dir}/deploy.sh activate"]
  }
}
