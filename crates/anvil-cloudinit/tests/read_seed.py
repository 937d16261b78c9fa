"""Reads a seed directory with cloud-init's own datasource code and prints
what cloud-init would use, as JSON. Run with Debian's cloud-init module on
PYTHONPATH: read_seed.py nocloud|configdrive CLOUD_DIR

CLOUD_DIR/seed/nocloud (or CLOUD_DIR/seed/config_drive) holds the files
exactly as they would be on the CIDATA / config-2 filesystem."""
import base64
import json
import sys

from cloudinit import helpers
from cloudinit.sources import DataSourceConfigDrive, DataSourceNoCloud

kind, cloud_dir = sys.argv[1], sys.argv[2]
paths = helpers.Paths({"cloud_dir": cloud_dir, "run_dir": cloud_dir + "/run"})
# No block devices: only the seed directory is looked at.
sys_cfg = {"datasource": {"NoCloud": {"fs_label": None}}}
if kind == "nocloud":
    ds = DataSourceNoCloud.DataSourceNoCloud(sys_cfg, None, paths)
else:
    ds = DataSourceConfigDrive.DataSourceConfigDrive(sys_cfg, None, paths)
if not ds._get_data():
    print(json.dumps({"found": False}))
    sys.exit(3)
hostname = ds.get_hostname(fqdn=True)
short = ds.get_hostname(fqdn=False)
print(
    json.dumps(
        {
            "found": True,
            "instance_id": ds.get_instance_id(),
            "fqdn": getattr(hostname, "hostname", hostname),
            "hostname": getattr(short, "hostname", short),
            "public_keys": ds.get_public_ssh_keys(),
            "user_data_b64": base64.b64encode(ds.get_userdata_raw() or b"").decode(),
            "network_config": ds.network_config,
        }
    )
)
