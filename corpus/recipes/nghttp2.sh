# nghttp2 1.52.0: the HTTP/2 library only (libnghttp2.so), built with CMake (the release
# tarball has no generated configure; Debian autoreconfs and also builds the nghttpx
# proxy and tools, which need libev, OpenSSL, c-ares and more). CPPFLAGS go into CFLAGS
# as debhelper's cmake build does; no NDEBUG: the library's assertions stay on, as in
# Debian's build.
set -e
export CFLAGS="$CFLAGS $CPPFLAGS"
export CXXFLAGS="$CXXFLAGS $CPPFLAGS"
cmake -S . -B build -DCMAKE_BUILD_TYPE=None -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  -DENABLE_LIB_ONLY=ON -DENABLE_STATIC_LIB=OFF -DENABLE_DOC=OFF -DWITH_JEMALLOC=OFF \
  -DENABLE_PYTHON_BINDINGS=OFF
cmake --build build -j2
