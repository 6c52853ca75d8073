#!/bin/sh
# The reporting PC's desktop in tests/tests/rdp.rs: what xrdp-sesman runs in each session (as
# the test user, with DISPLAY set to the session's Xorg). Two windows of known colours the test
# looks for in the client's screenshot: @LEFT@ on the first monitor, @RIGHT@ at x=1330, which is
# on a second monitor of 1280 pixels when the client has two and off screen otherwise.
# The session lasts as long as the last window (the session ends when the client disconnects).
xlogo -bg '@LEFT@' -fg '#ffffff' -geometry 1180x700+50+50 &
exec xlogo -bg '@RIGHT@' -fg '#ffffff' -geometry 1180x700+1330+50
