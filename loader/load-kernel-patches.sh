#!/bin/sh
# patch-build's boot loader of kernel live patches: loads the patches installed in the store for the running
# kernel, in the order of the store's manifest STORE/kernel/$(uname -r) ("SHA256 FILE NAME" lines, by name;
# written by loader/store.py), each only when its file still has the SHA-256 the manifest records. A patch
# that is not intact or that the kernel refuses is logged and left out; the others load all the same.
# The module checked and loaded is a private copy of the store's file, so what was checked is what loads.
# POSIX sh with sha256sum, stat, mktemp, cp and insmod (busybox is enough): it runs where Python may not, an
# initramfs.
# usage: load-kernel-patches [--store DIR] [--only NAME]
# Exit 0: every patch loaded (or loaded already, or none installed); 1: one or more left out; 2: bad usage,
# an unsafe store, a malformed manifest, or no safe private directory for the copies. One line per patch on
# stdout (under systemd: the journal).
STORE=${PATCH_BUILD_STORE:-/var/lib/patch-build}
ONLY=
while [ $# -gt 0 ]; do
    case $1 in
    --store|--only)
        if [ $# -lt 2 ]; then echo "load-kernel-patches: $1 needs a value" >&2; exit 2; fi
        if [ "$1" = --store ]; then STORE=$2; else ONLY=$2; fi
        shift 2 ;;
    *)
        echo "load-kernel-patches: unknown argument '$1' (usage: load-kernel-patches [--store DIR] [--only NAME])" >&2
        exit 2 ;;
    esac
done
RELEASE=$(uname -r)
MANIFEST=$STORE/kernel/$RELEASE

# Why the file or directory at $1 must not be trusted (it decides what runs in the kernel), or nothing: the
# checks loader/store.py makes. With $2 = sticky, a directory others may write into is trusted when it has the
# sticky bit (/tmp): they cannot rename or remove what the caller makes in it.
unsafe() {
    if [ -L "$1" ]; then echo "$1 is a symbolic link"; return; fi
    set -- "$1" "${2:-}" $(stat -c '%u %a' "$1" 2>/dev/null)
    if [ $# -ne 4 ]; then echo "$1 cannot be read"; return; fi
    if [ "$3" != 0 ] && [ "$3" != "$(id -u)" ]; then echo "$1 is owned by uid $3, not by root"; return; fi
    if [ $((0$4 & 022)) -ne 0 ] && { [ "$2" != sticky ] || [ $((0$4 & 01000)) -eq 0 ]; }; then
        echo "$1 is writable by group or others (mode $4)"
    fi
}

if [ ! -e "$MANIFEST" ] && [ ! -L "$MANIFEST" ]; then
    if [ -n "$ONLY" ]; then echo "not loaded $ONLY into kernel $RELEASE: not installed for it in $STORE"; exit 1; fi
    echo "no kernel patches installed for $RELEASE in $STORE"
    exit 0
fi
for path in "$STORE" "$STORE/kernel" "$STORE/modules" "$MANIFEST"; do
    why=$(unsafe "$path")
    if [ -n "$why" ]; then echo "load-kernel-patches: refused: $why" >&2; exit 2; fi
done
# Boot units of several packages may run at once: one at a time, so the order stays the manifest's.
if command -v flock >/dev/null 2>&1 && [ -f "$STORE/.lock" ]; then
    exec 9<"$STORE/.lock"
    flock 9
fi

# A malformed line: the store is damaged, and nothing is loaded from it.
line=0
while read -r sha file name rest; do
    line=$((line + 1))
    case $sha in '#'*) continue ;; esac
    case $sha$file$name in *[!A-Za-z0-9_.+/-]*) bad=1 ;; *) bad= ;; esac
    case $file in modules/*/*|modules/.*|*..*) bad=1 ;; modules/?*) ;; *) bad=1 ;; esac
    case $sha in *[!0-9a-f]*) bad=1 ;; esac
    if [ -n "$bad" ] || [ ${#sha} -ne 64 ] || [ -z "$name" ] || [ -n "$rest" ]; then
        echo "load-kernel-patches: $MANIFEST: malformed line $line" >&2
        exit 2
    fi
done <"$MANIFEST"

# Each module is copied into a new directory only this process can write to (mktemp -d: mode 0700), and the
# copy is checked and loaded: the store's file may change after its check, the copy cannot. At boot /run
# (root's; an initramfs may have no /run, then /tmp), or $TMPDIR when it is set. Removed however the loader ends.
private=
cleanup() { if [ -n "$private" ]; then rm -rf "$private"; fi; }
trap cleanup EXIT
for signal in HUP INT QUIT PIPE TERM; do
    trap "cleanup; trap - $signal; kill -$signal \$\$" $signal
done
for base in ${TMPDIR:+"$TMPDIR"} /run /tmp; do
    [ -d "$base" ] && [ -w "$base" ] || continue
    why=$(unsafe "$base" sticky)
    if [ -n "$why" ]; then echo "load-kernel-patches: refused: $why" >&2; exit 2; fi
    private=$(mktemp -d "$base/load-kernel-patches.XXXXXX" 2>/dev/null) && break
done
if [ -z "$private" ]; then
    echo "load-kernel-patches: refused: no private directory for the modules' copies (mktemp -d failed in" \
         "${TMPDIR:+$TMPDIR, }/run and /tmp)" >&2
    exit 2
fi

status=0
found=
while read -r sha file name rest; do
    case $sha in '#'*) continue ;; esac
    if [ -n "$ONLY" ] && [ "$name" != "$ONLY" ]; then continue; fi
    found=1
    if [ -d "/sys/module/$name" ]; then
        echo "loaded already: $name"
        continue
    fi
    module=$STORE/$file
    copy=$private/${file#modules/}
    why=$(unsafe "$module")
    if [ -z "$why" ] && ! out=$(cp "$module" "$copy" 2>&1); then
        why="copying $module: $(echo "$out" | head -n 1)"
    fi
    if [ -z "$why" ]; then
        sum=$(sha256sum "$copy" 2>/dev/null)
        sum=${sum%% *}
        [ "$sum" = "$sha" ] || why="$module is not intact (sha256 ${sum:-unreadable}, the store records $sha)"
    fi
    if [ -z "$why" ] && ! out=$(insmod "$copy" 2>&1); then
        why="insmod $module: $(echo "$out" | head -n 1)"
    fi
    rm -f "$copy"
    if [ -z "$why" ]; then
        echo "loaded $name into kernel $RELEASE ($module)"
        continue
    fi
    echo "not loaded $name into kernel $RELEASE, left out: $why"
    status=1
done <"$MANIFEST"
if [ -n "$ONLY" ] && [ -z "$found" ]; then
    echo "not loaded $ONLY into kernel $RELEASE: not installed for it in $STORE"
    status=1
fi
exit $status
