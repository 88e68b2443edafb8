# jq 1.6: the release tarball has no configure script (autoreconf makes it); the
# committed parser.c and lexer.c are used (no bison or flex); the system's oniguruma.
autoreconf -fi
./configure --prefix=/usr --disable-static --disable-docs --disable-maintainer-mode --with-oniguruma=yes
make -j2
