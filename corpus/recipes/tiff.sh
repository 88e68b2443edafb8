# libtiff 4.5.0: cmake in build/ (the orig tarball has no generated configure); cmake reads
# no CPPFLAGS, so they go into CFLAGS as debhelper does; optional codecs, C++, docs, tests
# and contrib off (zlib and libjpeg on).
export CFLAGS="$CFLAGS $CPPFLAGS"
cmake -S . -B build -DCMAKE_BUILD_TYPE=None -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  -Dcxx=OFF -Dtiff-docs=OFF -Dtiff-tests=OFF -Dtiff-contrib=OFF -Dtiff-opengl=OFF \
  -Dzstd=OFF -Dlzma=OFF -Dwebp=OFF -Djbig=OFF -Dlerc=OFF -Dlibdeflate=OFF -Dzlib=ON -Djpeg=ON
cmake --build build -j2
