# Lua 5.4.4 with its own Makefile (linux target); Debian's flags through the Makefile's
# MYCFLAGS/MYLDFLAGS, as its CFLAGS variable is the Makefile's own.
make -j2 linux MYCFLAGS="$CFLAGS $CPPFLAGS" MYLDFLAGS="$LDFLAGS"
