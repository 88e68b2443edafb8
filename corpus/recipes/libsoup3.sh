# libsoup3 3.2.3: meson + ninja in build/ inside the tree (meson always writes
# build/compile_commands.json). Debian's flags are already exported; debian/rules adds
# these linker flags. Left out: docs, tests, introspection/vala, GSSAPI, NTLM, sysprof
# (no fix touches them); tls_check=false only drops a configure-time glib-networking check.
set -e
export LDFLAGS="$LDFLAGS -Wl,-O1 -Wl,-z,defs"
nice -n 19 meson setup build --buildtype=plain --prefix=/usr --libdir=lib/x86_64-linux-gnu \
  -Dtests=false -Ddocs=disabled -Ddoc_tests=false -Dintrospection=disabled -Dvapi=disabled \
  -Dgssapi=disabled -Dntlm=disabled -Dbrotli=enabled -Dsysprof=disabled -Dautobahn=disabled \
  -Dpkcs11_tests=disabled -Dfuzzing=disabled -Dtls_check=false -Dinstalled_tests=false
nice -n 19 ninja -C build -j2
