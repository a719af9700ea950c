# Process, start() and join(): run a function in another OS process and wait for it.
import os
from multiprocessing import Process


def f(name, parent_pid):
    print('hello', name)
    print('in another process:', os.getpid() != parent_pid)


if __name__ == '__main__':
    p = Process(target=f, args=('bob', os.getpid()))
    p.start()
    p.join()
    print('joined, exit code', p.exitcode)
