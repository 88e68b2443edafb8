# tmux 3.3a: the shipped configure (no autoreconf); Debian's rules add --enable-utempter,
# left out here (it needs libutempter-dev and changes nothing the fixes touch).
./configure --prefix=/usr --disable-utf8proc
make -j2
