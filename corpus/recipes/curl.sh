# curl 7.88.1: autotools (the release tarball's configure), the OpenSSL flavour (Debian's
# libcurl4 and curl) with the configure options of debian/rules: no symbol hiding,
# versioned symbols, the threaded resolver, nghttp2, libssh2 (Debian's choice), libpsl
# (on by default), the CA paths. Left out: GSS-API and LDAP (libkrb5-dev, libldap-dev;
# Debian enables both), the zsh completion, the static library, and Debian's
# -DCURL_PATCHSTAMP/-D_DEB_HOST_ARCH (version strings only).
set -e
./configure --prefix=/usr --disable-static --disable-dependency-tracking \
  --disable-symbol-hiding --enable-versioned-symbols --enable-threaded-resolver \
  --with-openssl --with-nghttp2 --without-libssh --with-libssh2 --with-libpsl \
  --without-zstd --without-brotli --without-libidn2 --without-librtmp --without-gssapi \
  --disable-ldap --disable-ldaps \
  --with-ca-path=/etc/ssl/certs --with-ca-bundle=/etc/ssl/certs/ca-certificates.crt
make -j2
# The library must carry debug info and Debian's flags.
readelf -S lib/.libs/libcurl.so.4.8.0 | grep -q '\.debug_info'
