# Reboots once, through the disk: the first boot writes a marker to
# /dev/vda and reboots (the VM starts again from its images, its disk
# kept); the second finds the marker, reports it and returns (init then
# powers off).
marker="atoll-rebooted"
found=$(head -c ${#marker} /dev/vda)
if [ "$found" = "$marker" ]; then
    echo "@ev {\"ev\":\"linux_check\",\"check\":\"reboot\",\"ok\":true}"
    exit 0
fi
printf '%s' "$marker" | dd of=/dev/vda conv=fsync 2>/dev/null
reboot -f
sleep 10
echo "@ev {\"ev\":\"linux_check\",\"check\":\"reboot\",\"ok\":false}"
exit 1
