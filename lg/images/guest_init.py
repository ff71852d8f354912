"""The guest's init scripts (busybox sh). Their text is part of every image digest.

Boot contract (docs/images.md): mount the kernel filesystems, load the recipe's modules, bring up the root
(the initramfs itself, or an ext4 disk on /dev/vda that is this VM's own copy-on-write overlay), set the
hostname from `lg.hostname=`, then exec the guest agent as PID 1 (it reaps orphans and powers off rather than
exit). If the agent cannot start, say so on the console and power off, so the VM ends instead of hanging.
"""

from __future__ import annotations

_COMMON_SETUP = r"""
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
bb=/bin/busybox
$bb mount -t proc proc /proc 2>/dev/null
$bb mount -t sysfs sysfs /sys 2>/dev/null
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
"""

_START_AGENT = r"""
$bb mkdir -p /sys/fs/cgroup
# favordynmods (Linux 6.0+): moving a process into a cgroup, which every confined command does, no longer waits
# for an RCU grace period (under TCG that was 15 ms of each exec); forks pay a plain rwsem instead.
$bb mount -t cgroup2 -o nsdelegate,favordynmods cgroup2 /sys/fs/cgroup 2>/dev/null \
  || $bb mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup 2>/dev/null || echo "lg-init: cannot mount cgroup2"
$bb mount -t securityfs securityfs /sys/kernel/security 2>/dev/null || echo "lg-init: cannot mount securityfs"
$bb mount -t tmpfs -o mode=1777 tmpfs /tmp
# Loopback for steps that talk to themselves (test servers); other NICs exist only with an allow-list.
$bb ip link set lo up 2>/dev/null
$bb mkdir -p /run /workspace
$bb mount -t tmpfs -o mode=755 tmpfs /run
for word in $($bb cat /proc/cmdline); do
  case "$word" in lg.hostname=*) $bb hostname "${word#lg.hostname=}" ;; esac
done
cd /
export PYTHONPATH=/opt/lg PYTHONDONTWRITEBYTECODE=1
exec /usr/bin/python3 -s -B -m lg.guest.agent
"""

_FAIL = r"""
echo "lg-init: $1" > /dev/console
$bb sync
$bb poweroff -f
"""

_LOAD_MODULES = r"""
for module in $($bb cat /etc/lg/modules); do
  $bb insmod "/lib/modules/lg/$module.ko" 2>/dev/null || echo "lg-init: cannot load module $module"
done
"""

INITRAMFS_INIT = (
    "#!/bin/busybox sh\n# lg guest init: the whole root is this initramfs.\n"
    + _COMMON_SETUP + _LOAD_MODULES + _START_AGENT.replace("exec ", "") + _FAIL.replace("$1", "agent exited with $?")
)

DISK_INIT = (
    "#!/bin/busybox sh\n# lg guest init, stage 1: load drivers, mount this VM's root disk, switch to it.\n"
    + _COMMON_SETUP + _LOAD_MODULES
    + r"""
$bb mkdir -p /newroot
if ! $bb mount -t ext4 /dev/vda /newroot; then
""" + _FAIL.replace("$1", "cannot mount the root disk /dev/vda") + r"""
fi
# The agent layer travels in the initramfs, so an agent change never rebuilds the disk.
$bb mkdir -p /newroot/opt/lg && $bb cp -a /opt/lg/. /newroot/opt/lg/
$bb mount --move /proc /newroot/proc
$bb mount --move /sys /newroot/sys
$bb mount --move /dev /newroot/dev
exec $bb switch_root /newroot /sbin/lg-init
"""
)

DISK_STAGE2 = (
    "#!/bin/busybox sh\n# lg guest init, stage 2: on the root disk.\nbb=/bin/busybox\n"
    "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport HOME=/root\n"
    + _START_AGENT.replace("exec ", "") + _FAIL.replace("$1", "agent exited with $?")
)
