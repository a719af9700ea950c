# Lock: four processes add to one shared counter; the lock makes each += whole.
from multiprocessing import Process, Lock, Value


def add(lock, counter, n):
    for _ in range(n):
        with lock:
            counter.value += 1


if __name__ == '__main__':
    lock = Lock()
    counter = Value('i', 0, lock=False)
    ps = [Process(target=add, args=(lock, counter, 1000)) for _ in range(4)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    print(counter.value)
