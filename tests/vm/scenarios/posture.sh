# needs: modules
# `modtrace audit --format json` beside the hardening guide's own audit script
# (guide-audit-script, copied verbatim from the guide; the guest has no bash, so
# busybox sh runs it) in four states of one host: plain, the guide's CIS file
# applied, a tainting (unsigned) module loaded, modules_disabled set.
F=/lib/modtrace-fixtures

# posture LABEL: the script and the audit, one after the other, unchanged host.
# busybox sh runs its own lsmod and modinfo applets before any in PATH, and its
# modinfo prints no signature; on a Debian host bash runs kmod's, so do we.
posture() {
    act "script_$1" sh -c 'lsmod() { /sbin/lsmod "$@"; }; modinfo() { /sbin/modinfo "$@"; }; . /scenarios/guide-audit-script'
    act "audit_$1" "$MODTRACE" audit --format json
}

# A few modules loaded, as on any host; sctp is on the CIS list.
act modprobe_sctp /sbin/modprobe sctp
act modprobe_loop /sbin/modprobe loop
# What the script's modinfo says of one loaded module, errors included.
act modinfo_sctp /sbin/modinfo sctp
posture plain

mkdir -p /etc/modprobe.d
for m in cramfs freevxfs jffs2 hfs hfsplus squashfs udf usb-storage dccp sctp rds tipc firewire-core; do
    echo "install $m /bin/true"
done > /etc/modprobe.d/CIS.conf
for m in cramfs freevxfs jffs2 hfs hfsplus squashfs udf usb-storage dccp sctp rds tipc firewire-core; do
    echo "blacklist $m"
done >> /etc/modprobe.d/CIS.conf
posture cis

act insmod_unsigned /sbin/insmod $F/dummy-unsigned.ko
posture tainting

echo 1 > /proc/sys/kernel/modules_disabled
posture modules_disabled
