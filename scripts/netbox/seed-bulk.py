#!/usr/bin/env python3
"""Creates many devices in a running test NetBox, fast, for the issue #5 benchmark.

    scripts/netbox/seed-bulk.py --instance DIR [--devices 1000] [--first 1] [--site bench] [--jobs N]

DIR is an instance started by scripts/netbox/instance.sh; ANVIL_NETBOX_HOME names
setup.sh's STATE_DIR (default <workspace>/target/netbox). Run it with any python3:
it re-executes itself with the NetBox venv's interpreter.

Every device n (first .. first+devices-1, at most 65535) gets the shape the
benchmark synchronises, with the same names and values as the Rust helper's
DeviceSpec::numbered(n, 2):
  device  node-NNNNN, serial SN-NNNNNN, asset tag AT-NNNNNN, status planned, in one site
  eth0, eth1  each with a MAC object 02:00:00:HI:LO:0K that is its primary MAC
  bmc     mgmt_only, MAC 02:01:00:HI:LO:00, IP 10.128.HI.LO/16 = the device's oob_ip
  eth0    IP 10.64.HI.LO/16 = the device's primary_ip4
(HI, LO = the bytes of n; the addresses are data only, nothing is sent to them).

Why the ORM rather than REST: REST costs ~0.6-1 s of server CPU per fully described
device (serializer, validation, changelog, webhooks per request); model .save() keeps
NetBox's own signals (cached counters, search index, the interface's cached site) but
skips the HTTP and changelog layers, which do not matter for a read benchmark. Event
rules do not fire for these writes (no request). Prints progress on stderr and one
JSON summary line on stdout.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKSPACE = os.path.dirname(os.path.dirname(HERE))


def read_env(path):
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#') or '=' not in line:
                continue
            key, value = line.split('=', 1)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values[key] = value
    return values


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--instance', required=True, help='instance dir (instance.sh start DIR)')
    parser.add_argument('--devices', type=int, default=1000)
    parser.add_argument('--first', type=int, default=1, help='number of the first device')
    parser.add_argument('--site', default='bench')
    parser.add_argument('--batch', type=int, default=20, help='devices per transaction')
    # Two jobs were no faster than one on the (busy) 2-core development machine;
    # the option is for an idle machine with more cores.
    parser.add_argument('--jobs', type=int, default=1, help='parallel processes')
    args = parser.parse_args()
    if args.devices < 0 or args.first < 1 or args.first + args.devices - 1 > 65535:
        parser.error('devices must be numbered within 1..65535')
    return args


def main():
    args = parse_args()
    home = os.environ.get('ANVIL_NETBOX_HOME') or os.path.join(
        os.environ.get('CARGO_TARGET_DIR') or os.path.join(WORKSPACE, 'target'), 'netbox')
    setup = read_env(os.path.join(home, 'netbox.env'))
    instance_dir = os.path.abspath(args.instance)
    instance = read_env(os.path.join(instance_dir, 'env'))

    venv_python = os.path.join(setup['NETBOX_VENV'], 'bin', 'python')
    if os.path.realpath(sys.prefix) != os.path.realpath(setup['NETBOX_VENV']):
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])

    # The same environment instance.sh gives the instance's own processes.
    os.environ.update({
        'DJANGO_SETTINGS_MODULE': 'netbox.settings',
        'NETBOX_ROOT': home,
        'ANVIL_NETBOX_INSTANCE': instance_dir,
        'ANVIL_NETBOX_DB_NAME': instance['NETBOX_DB'],
        'ANVIL_NETBOX_DB_PORT': setup['NETBOX_PG_PORT'],
        'ANVIL_NETBOX_REDIS_SOCKET': os.path.join(instance_dir, 'redis.sock'),
        'ANVIL_NETBOX_MEDIA_ROOT': os.path.join(instance_dir, 'media'),
    })
    import django
    django.setup()
    seed(args)


def seed(args):
    from django.db import connections
    from dcim.models import DeviceRole, DeviceType, Manufacturer, Site

    started = time.monotonic()
    site, _ = Site.objects.get_or_create(name=args.site, defaults={'slug': args.site, 'status': 'active'})
    manufacturer, _ = Manufacturer.objects.get_or_create(name='Acme', defaults={'slug': 'acme'})
    device_type, _ = DeviceType.objects.get_or_create(
        manufacturer=manufacturer, model='Acme S1', defaults={'slug': 'acme-s1'})
    role, _ = DeviceRole.objects.get_or_create(name='server', defaults={'slug': 'server', 'color': '9e9e9e'})
    shared = (site, device_type, role)

    numbers = range(args.first, args.first + args.devices)
    jobs = max(1, min(args.jobs, len(numbers)))
    # Python is the bottleneck (each save runs NetBox's signals and queries):
    # --jobs forks processes, each with its own database connection and a
    # contiguous slice of the device numbers.
    connections.close_all()
    children = []
    for j in range(jobs):
        part = numbers[j * len(numbers) // jobs:(j + 1) * len(numbers) // jobs]
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                seed_range(part, shared, args.batch, started, label=f'job {j + 1}/{jobs}')
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    failed = sum(1 for pid in children if os.waitpid(pid, 0)[1] != 0)
    if failed:
        sys.exit(f'seed-bulk: {failed} of {jobs} jobs failed')
    count = len(numbers)
    print(json.dumps({'devices': count, 'interfaces': 3 * count, 'macs': 3 * count, 'ips': 2 * count,
                      'jobs': jobs, 'seconds': round(time.monotonic() - started, 2)}))


def seed_range(numbers, shared, batch, started, label):
    from django.contrib.contenttypes.models import ContentType
    from django.db import transaction
    from dcim.models import Device, Interface, MACAddress
    from ipam.models import IPAddress

    site, device_type, role = shared
    interface_type = ContentType.objects.get_for_model(Interface)

    def add_mac(interface, mac):
        obj = MACAddress(mac_address=mac, assigned_object_type=interface_type, assigned_object_id=interface.pk)
        obj.save()
        interface.primary_mac_address = obj
        interface.save(update_fields=['primary_mac_address'])

    def add_ip(interface, address):
        ip = IPAddress(address=address, status='active', assigned_object_type=interface_type,
                       assigned_object_id=interface.pk)
        ip.save()
        return ip

    done = 0
    # Small transactions: every device increments its device type's counter
    # row, which parallel jobs would otherwise wait on for a whole batch.
    for chunk_start in range(0, len(numbers), batch):
        with transaction.atomic():
            for n in numbers[chunk_start:chunk_start + batch]:
                hi, lo = n >> 8, n & 0xFF
                device = Device(name=f'node-{n:05}', serial=f'SN-{n:06}', asset_tag=f'AT-{n:06}',
                                status='planned', site=site, device_type=device_type, role=role)
                device.save()
                data = []
                for k in range(2):
                    interface = Interface(device=device, name=f'eth{k}', type='1000base-t')
                    interface.save()
                    add_mac(interface, f'02:00:00:{hi:02X}:{lo:02X}:{k:02X}')
                    data.append(interface)
                bmc = Interface(device=device, name='bmc', type='1000base-t', mgmt_only=True)
                bmc.save()
                add_mac(bmc, f'02:01:00:{hi:02X}:{lo:02X}:00')
                device.oob_ip = add_ip(bmc, f'10.128.{hi}.{lo}/16')
                device.primary_ip4 = add_ip(data[0], f'10.64.{hi}.{lo}/16')
                # update_fields: a full save would write back the in-memory interface
                # counter (0), clobbering the counts NetBox's signals kept in the row.
                device.save(update_fields=['oob_ip', 'primary_ip4'])
                done += 1
        if done % 100 == 0 or done == len(numbers):
            print(f'seed-bulk: {label}: {done}/{len(numbers)} devices, '
                  f'{time.monotonic() - started:.1f} s', file=sys.stderr, flush=True)


if __name__ == '__main__':
    main()
