# shared_memory.SharedMemory holding an array of 64-bit integers. With numpy the views are
# np.ndarray(a.shape, dtype=np.int64, buffer=shm.buf); the standard library's
# memoryview.cast('q') is the same view without numpy.
from multiprocessing import Process, shared_memory


def f(name, n):
    shm = shared_memory.SharedMemory(name=name)  # attach by name
    c = shm.buf.cast('q')
    c[n - 1] = 888
    for i in range(n):
        c[i] *= 10
    del c  # release the view before closing
    shm.close()


if __name__ == '__main__':
    a = [1, 1, 2, 3, 5, 8]
    shm = shared_memory.SharedMemory(create=True, size=8 * len(a))
    b = shm.buf.cast('q')
    for i, x in enumerate(a):
        b[i] = x
    print(b.tolist())
    p = Process(target=f, args=(shm.name, len(a)))
    p.start()
    p.join()
    print(b.tolist())
    print('sum', sum(b))
    del b
    shm.close()
    shm.unlink()
