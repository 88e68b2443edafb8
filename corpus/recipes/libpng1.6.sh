# libpng 1.6.39: the release tarball's configure (no autoreconf), shared library only.
./configure --prefix=/usr --disable-static
make -j2
