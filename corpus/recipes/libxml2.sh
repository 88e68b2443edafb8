# libxml2 2.9.14: autotools (the release tarball's configure), with the configure options
# of Debian's main (arch) build and the -Wall -O3 debian/rules appends to CFLAGS. Left out:
# the python bindings (a separate build in Debian), readline history (xmllint's shell
# only) and the static library.
set -e
export CFLAGS="$CFLAGS -Wall -O3"
./configure --prefix=/usr --disable-static --without-python --with-icu --without-history
make -j2
# The library must carry debug info and Debian's flags.
readelf -S .libs/libxml2.so.2.9.14 | grep -q '\.debug_info'
