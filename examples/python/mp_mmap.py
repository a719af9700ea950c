# mmap: two processes map the same file; what one writes, the other reads.
import mmap
import os
import tempfile
from multiprocessing import Process


def f(path):
    with open(path, 'r+b') as fh, mmap.mmap(fh.fileno(), 0) as m:
        m[0:5] = b'HELLO'


if __name__ == '__main__':
    fd, path = tempfile.mkstemp()
    with os.fdopen(fd, 'wb') as fh:
        fh.write(b'hello world\n')
    p = Process(target=f, args=(path,))
    p.start()
    p.join()
    with open(path, 'rb') as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        print(m.readline())
    os.remove(path)
