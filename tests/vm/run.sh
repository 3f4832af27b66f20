#!/bin/bash
# tests/vm/run.sh — run a command inside a throw-away QEMU VM with a pure cgroup v2 hierarchy.
#
# The VM boots Debian's stock kernel (fetched once with `apt-get download`, unpacked with
# `dpkg -x`, cached in .cache/vm/ of the repository) under TCG (KVM here only runs special
# guest kernels), with the host's / shared read-only over 9p under a tmpfs overlay, so the
# guest has the same runc, etcd, python and .venv as the host, and the repository shared
# read-write at the same path. cgroup2 is mounted alone on /sys/fs/cgroup with the cpu, memory,
# pids, io and cpuset controllers delegated from the root. Boot takes ~4 s.
#
# usage: tests/vm/run.sh [-m MEM_MB] [-s CPUS] [-t TIMEOUT_S] -- command [args...]
#        tests/vm/run.sh --prepare     fetch the kernel and build the initramfs, boot nothing
# exit status: the command's, inside the VM (125: the VM reported none).
# env: VM_CACHE (default <repo>/.cache/vm), VM_DEBUG=1 shows the whole console.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MEM=1024; CPUS=2; TMO=600; PREPARE=
[ "${1:-}" = "--prepare" ] && { PREPARE=1; shift; }
while getopts "m:s:t:" o; do case $o in
  m) MEM=$OPTARG;; s) CPUS=$OPTARG;; t) TMO=$OPTARG;;
  *) echo "usage: $0 [-m MB] [-s cpus] [-t timeout] -- cmd..." >&2; exit 2;; esac; done
shift $((OPTIND-1)); [ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || [ -n "$PREPARE" ] || { echo "no command given" >&2; exit 2; }
CACHE=${VM_CACHE:-$REPO/.cache/vm}
mkdir -p "$CACHE"

# -- 1. the kernel: Debian's linux-image package, unpacked, never installed -------------------
if ! ls "$CACHE"/kpkg/boot/vmlinuz-* >/dev/null 2>&1; then
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$KPKG" ] || { echo "vm: no linux-image-amd64 in apt's lists (run apt-get update)" >&2; exit 125; }
  (cd "$CACHE" && apt-get download -q "$KPKG" >/dev/null && dpkg -x "$KPKG"_*.deb kpkg && rm -f "$KPKG"_*.deb)
fi
VMLINUZ=$(ls "$CACHE"/kpkg/boot/vmlinuz-* | head -1)
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR=$CACHE/kpkg/lib/modules/$KVER
# Boot the uncompressed ELF through QEMU's PVH entry: in-guest XZ decompression costs ~3.5 s
# under TCG.
KERNEL=$CACHE/vmlinux-$KVER
if [ ! -s "$KERNEL" ]; then
  python3 - "$VMLINUZ" "$KERNEL" <<'PY' || KERNEL=$VMLINUZ
import lzma, sys
data = open(sys.argv[1], "rb").read()
out = lzma.LZMADecompressor().decompress(data[data.find(b"\xfd7zXZ\x00"):])
assert out[:4] == b"\x7fELF"
open(sys.argv[2], "wb").write(out)
PY
fi

# -- 2. the initramfs: static busybox, the virtio/9p/overlay modules, /init --------------------
INITRD=$CACHE/initrd-$KVER.gz
if [ ! -s "$INITRD" ] || [ "$0" -nt "$INITRD" ]; then
  R=$CACHE/initramfs; rm -rf "$R"; mkdir -p "$R"/{bin,proc,sys,dev,lower,rw,newroot,mods}
  cp /bin/busybox "$R/bin/busybox"  # Debian's busybox-static
  [ -f "$MODDIR/modules.dep" ] || busybox depmod -b "$CACHE/kpkg" "$KVER"
  python3 - "$MODDIR" "$R/mods" <<'PY'
import os, shutil, sys
moddir, out = sys.argv[1:]
deps = {}
for line in open(os.path.join(moddir, "modules.dep")):
    name, rest = line.split(":", 1)
    deps[name] = rest.split()
by_name = {os.path.basename(k).split(".ko")[0]: k for k in deps}
order = []
def add(path):
    for dep in reversed(deps[path]):
        add(dep)
    if path not in order:
        order.append(path)
for module in ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay"):
    add(by_name[module])
with open(os.path.join(out, "order"), "w") as f:
    for path in order:
        shutil.copy(os.path.join(moddir, path), out)
        f.write(os.path.basename(path) + "\n")
PY
  cat > "$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^vm\.$1=//p"; }
WORK=$(arg work)
O="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o $O,ro,cache=loose hostroot /lower
mount -t tmpfs -o mode=755 tmpfs /rw; mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || mount --bind /lower /newroot
N=/newroot
mount -t proc proc $N/proc; mount -t sysfs sysfs $N/sys; mount -t devtmpfs devtmpfs $N/dev
mkdir -p $N/dev/pts $N/dev/shm; mount -t devpts devpts $N/dev/pts; mount -t tmpfs tmpfs $N/dev/shm
mount -t cgroup2 -o nsdelegate cgroup2 $N/sys/fs/cgroup
for c in cpuset cpu io memory pids; do echo "+$c" > $N/sys/fs/cgroup/cgroup.subtree_control; done
mount -t tmpfs -o mode=1777 tmpfs $N/tmp; mount -t tmpfs -o mode=755 tmpfs $N/run
mkdir -p $N/.vmctl; mount -t 9p -o $O,cache=none ctl $N/.vmctl
mkdir -p "$N$WORK"; mount -t 9p -o $O,cache=none work "$N$WORK"
echo "===vm-begin==="
chroot $N /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb THINGDOER_VM=1 /bin/sh /.vmctl/cmd.sh < /dev/null
rc=$?; echo "===vm-end==="; echo $rc > $N/.vmctl/rc
sync; umount $N/.vmctl "$N$WORK" 2>/dev/null
poweroff -f
EOF
  chmod +x "$R/init"
  mknod -m 600 "$R/dev/console" c 5 1
  (cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$INITRD.tmp") && mv "$INITRD.tmp" "$INITRD"
fi

[ -z "$PREPARE" ] || exit 0

# -- 3. the command, in a control dir the guest mounts ----------------------------------------
CTL=$(mktemp -d "$CACHE/ctl.XXXXXX"); trap 'rm -rf "$CTL"' EXIT
{ echo "cd $(printf %q "$PWD") || exit 126"; printf '%q ' "$@"; echo; } > "$CTL/cmd.sh"
echo 125 > "$CTL/rc"

# -- 4. boot; the console between the markers is the command's output --------------------------
timeout --foreground -k 5 "$TMO" qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
  -m "$MEM" -smp "$CPUS" -nographic -no-reboot -nic none -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 vm.work=$REPO" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$CTL",mount_tag=ctl,security_model=none \
  -virtfs local,path="$REPO",mount_tag=work,security_model=none \
  </dev/null | tr -d '\r' | { [ -n "${VM_DEBUG:-}" ] && cat || awk '/===vm-end===/{p=0} p{print; fflush()} /===vm-begin===/{p=1}'; }
exit "$(cat "$CTL/rc" 2>/dev/null || echo 125)"
