#!/bin/bash
# PID 1 of the vm-check guest (baked into the cached image as /sbin/ct-init; booted with
# init=/sbin/ct-init). No systemd: mount what Mininet and the testbed need, bring up
# QEMU's user-mode network, mount the host's share (9p) and run its guest.sh. Whatever
# happens, the machine powers off at the end, so QEMU exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
off() { sync; echo 1 > /proc/sys/kernel/sysrq; echo o > /proc/sysrq-trigger; sleep 30; }
trap off EXIT
mnt() { mountpoint -q "$2" || { mkdir -p "$2"; mount -t "$1" "$1" "$2" ${3:+-o "$3"}; }; }
mnt proc /proc; mnt sysfs /sys; mnt devtmpfs /dev
mnt devpts /dev/pts; mnt tmpfs /dev/shm; mnt tmpfs /run mode=755; mnt tmpfs /tmp mode=1777
mnt cgroup2 /sys/fs/cgroup; mnt bpf /sys/fs/bpf; mnt debugfs /sys/kernel/debug
mount -o remount,rw /
hostname chaintwin-vm
printf '127.0.0.1 localhost\n127.0.1.1 chaintwin-vm\n' > /etc/hosts
# QEMU user-mode net, moved off 10.0.2.0/24 (the testbed numbers its segments 10.0.s.0/24).
ip link set lo up
ip link set eth0 up
ip addr add 192.168.76.15/24 dev eth0
ip route add default via 192.168.76.2
echo 'nameserver 192.168.76.3' > /etc/resolv.conf
modprobe -a 9p 9pnet_virtio
mkdir -p /mnt/share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 ctshare /mnt/share
bash /mnt/share/vm/guest.sh 2>&1 | tee /mnt/share/guest.log > /dev/console
rc=${PIPESTATUS[0]}
echo "$rc" > /mnt/share/guest-exit
echo "CT-GUEST-EXIT $rc" > /dev/console
