# FreeType 2.12.1, library only (the ft2demos and ft2docs components are not in the tree):
# the shipped configure (builds/unix) and GNU make; optional bzip2, harfbuzz, brotli and
# librsvg off, zlib and libpng on. Each module is one unity unit (src/base/ftbase.c
# includes ftobjs.c, src/truetype/truetype.c includes ttgload.c and ttgxvar.c).
./configure --prefix=/usr --disable-static --without-bzip2 --without-harfbuzz \
  --without-brotli --without-librsvg --with-zlib=yes --with-png=yes
make -j2
