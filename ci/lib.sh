# Shared by ci/fresh-debian.sh and ci/vm-check.sh (sourced, not run): how both find this
# machine's Debian mirror, mount a chroot's kernel file systems and hand a new root this
# machine's way to the package registries.

debian_mirror() {  # $MIRROR, else apt's first non-security source on this machine
  if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
  { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
    | grep -E '^(URIs:|deb )' | grep -v security | head -1 \
    | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//; s/ .*//'
}

chroot_mounts() {  # $1: root. proc, sys, dev, dev/pts; each appended to the caller's
  local m          # `mounted` array, which its cleanup unmounts deepest first
  for m in proc sys dev dev/pts; do
    mkdir -p "$1/$m"
    case $m in
      proc) mount -t proc proc "$1/proc" ;;
      sys) mount -t sysfs sys "$1/sys" ;;
      *) mount --bind "/$m" "$1/$m" ;;
    esac
    mounted+=("$1/$m")
  done
}

copy_host_access() {  # $1: root. Reach the registries the way this machine does: its apt
  # settings, its pip configuration, and the local CA certificates it trusts (a registry
  # proxy may present its own). Nothing of the project's is copied this way.
  cp -f /etc/apt/apt.conf.d/*proxy* /etc/apt/apt.conf.d/99artifact-registry \
    "$1/etc/apt/apt.conf.d/" 2>/dev/null || true
  if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$1/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"
  fi
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$1/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
  fi
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$1/etc/pip.conf"; fi
  if [ -f /root/.config/pip/pip.conf ]; then
    mkdir -p "$1/root/.config/pip" && cp /root/.config/pip/pip.conf "$1/root/.config/pip/"
  fi
}
