-- One chunk per line on stdin, compiled and run; one answer line each.
io.stdout:setvbuf('line')
print('ready')
for line in io.lines() do
  local f, e = load(line)
  if f then print('ok', pcall(f)) else print('err', e) end
end
