# The acceptance workload: one checksum loop pinned to each CPU over the
# same generated data (every CPU must get the same sum, and each loop must
# have run on its CPU), then data written through virtio-blk and read back
# after the page cache was dropped. Each check prints a `linux_check` event.

check() {
    # $1 = name, $2 = 0 if it passed, $3 = extra JSON fields
    if [ "$2" = 0 ]; then ok=true; else ok=false; fi
    echo "@ev {\"ev\":\"linux_check\",\"check\":\"$1\",\"ok\":$ok$3}"
    [ "$2" = 0 ] || exit 1
}

cpus=$(grep -c ^processor /proc/cpuinfo)

# $1 = CPU: checksum 40000 generated lines there, and record where it ran
# (field 39 of /proc/PID/stat is the CPU the process last ran on).
checksum() {
    taskset -c "$1" sh -c "seq 1 40000 | sha256sum | cut -d' ' -f1 > /tmp/sum.$1;
        cut -d' ' -f39 /proc/\$\$/stat > /tmp/cpu.$1"
}

cpu=0
while [ $cpu -lt "$cpus" ]; do
    checksum $cpu &
    cpu=$((cpu + 1))
done
wait

first=$(cat /tmp/sum.0)
bad=0
cpu=0
while [ $cpu -lt "$cpus" ]; do
    [ "$(cat /tmp/sum.$cpu)" = "$first" ] || bad=1
    [ "$(cat /tmp/cpu.$cpu)" = "$cpu" ] || bad=1
    cpu=$((cpu + 1))
done
check smp_checksum $bad ",\"cpus\":$cpus,\"sum\":\"$(echo "$first" | cut -c1-16)\""

disk=/dev/vda
[ -b $disk ]
check virtio_blk_present $? ""

blocks=256
dd if=/dev/urandom of=/tmp/data bs=4096 count=$blocks 2>/dev/null
want=$(sha256sum < /tmp/data | cut -d' ' -f1)
dd if=/tmp/data of=$disk bs=4096 conv=fsync 2>/dev/null
check virtio_blk_write $? ",\"bytes\":$((blocks * 4096))"

reads() { awk '$3 == "vda" { print $4 }' /proc/diskstats; }
blockdev --flushbufs $disk
before=$(reads)
got=$(dd if=$disk bs=4096 count=$blocks 2>/dev/null | sha256sum | cut -d' ' -f1)
after=$(reads)
[ "$got" = "$want" ] && [ "$after" -gt "$before" ]
check virtio_blk_readback $? ",\"reads\":$((after - before)),\"sha256\":\"$(echo "$got" | cut -c1-16)\""

# With a virtio-console, the last check goes out through it (/dev/hvc0)
# instead of the UART: seeing the event proves the device works.
if [ -e /dev/hvc0 ]; then
    echo "@ev {\"ev\":\"linux_check\",\"check\":\"virtio_console\",\"ok\":true}" > /dev/hvc0
fi
