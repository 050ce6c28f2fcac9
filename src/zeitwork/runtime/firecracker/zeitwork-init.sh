#!/.zeitwork/busybox sh
# zeitwork-init: PID 1 of a Zeitwork microVM (installed into every image's ext4 rootfs).
#
# Mounts proc, sys and dev, reads this instance's settings from the second drive (/dev/vdb,
# written by the node agent; every value in it is shell-quoted), sets the hostname, runs the
# app as the image's user with the instance's environment, forwards Ctrl-Alt-Del (SIGINT)
# and SIGTERM to it, reaps orphans while it waits, then reports the exit status on the
# console and reboots, which ends the microVM (kernel argument reboot=k).
bb=/.zeitwork/busybox

$bb mkdir -p /proc /sys /dev /run /tmp
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb grep -q " /dev " /proc/mounts || $bb mount -t devtmpfs devtmpfs /dev
[ -c /dev/null ] || $bb mknod -m 666 /dev/null c 1 3
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$bb mount -t tmpfs -o mode=0755 tmpfs /run
$bb ip link set lo up

finish() {
    echo "zeitwork-init: exit $1"
    $bb sync
    $bb reboot -f
    exit "$1"
}

if [ ! -b /dev/vdb ]; then
    echo "zeitwork-init: the instance settings drive /dev/vdb is missing"
    finish 127
fi
# Defines ZW_HOSTNAME, ZW_CWD, ZW_RESOLV and sets "$@" to the launch argv.
. /dev/vdb

$bb hostname "$ZW_HOSTNAME"
if [ -n "$ZW_RESOLV" ]; then
    printf '%s' "$ZW_RESOLV" >/etc/resolv.conf
fi
cd "$ZW_CWD" || finish 126

child=
forward() {
    if [ -n "$child" ]; then
        $bb kill -TERM "$child" 2>/dev/null
    fi
}
trap forward INT TERM

"$@" </dev/null &
child=$!

code=0
while :; do
    wait "$child"
    code=$?
    # wait returns early (status > 128) when a trapped signal arrives; the app may live on.
    if ! $bb kill -0 "$child" 2>/dev/null; then
        break
    fi
done

if $bb dmesg 2>/dev/null | $bb grep -q "Killed process $child "; then
    echo "zeitwork-init: oom"
fi
finish "$code"
