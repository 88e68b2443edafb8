# c-ares 1.18.1: autotools, as Debian builds it. Upstream's configure rewrites CFLAGS
# (-g becomes -g0, optimisation flags are replaced); Debian's disable-cflags-rewrite.diff
# comments out the two macros that do it in configure.ac and debhelper reruns autoreconf,
# so the library keeps dpkg-buildflags' CFLAGS (-g -O2 ...). The same edit here, then
# Debian's configure options (debian/rules); static library left out.
set -e
sed -i -e 's/^CARES_SET_COMPILER_DEBUG_OPTS$/#&/' \
       -e 's/^CARES_SET_COMPILER_OPTIMIZE_OPTS$/#&/' configure.ac
grep -q '^#CARES_SET_COMPILER_DEBUG_OPTS$' configure.ac
grep -q '^#CARES_SET_COMPILER_OPTIMIZE_OPTS$' configure.ac
autoreconf -fi
./configure --prefix=/usr --enable-shared --disable-static --enable-symbol-hiding --disable-tests
make -j2
# The library must carry debug info and Debian's flags.
readelf -S src/lib/.libs/libcares.so.2.5.1 | grep -q '\.debug_info'
