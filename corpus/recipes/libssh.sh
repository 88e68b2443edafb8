# libssh 0.10.6: CMake, the OpenSSL flavour Debian ships as libssh-4 (debian/rules also
# builds a libgcrypt flavour, and GSSAPI, static library and unit tests, left out here).
# debhelper's cmake build adds CPPFLAGS to CFLAGS and Debian's rules append -z defs to
# LDFLAGS; compile commands are exported for `rlivepatch build --compile-commands`.
set -e
export CFLAGS="$CFLAGS $CPPFLAGS"
export LDFLAGS="$LDFLAGS -Wl,-z,defs -Wl,-O1"
cmake -S . -B build -DCMAKE_BUILD_TYPE=None -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  -DWITH_GSSAPI=OFF -DWITH_NACL=OFF -DWITH_EXAMPLES=OFF -DUNIT_TESTING=OFF \
  -DWITH_SERVER=ON -DWITH_SFTP=ON -DWITH_ZLIB=ON -DBUILD_STATIC_LIB=OFF
cmake --build build -j2
