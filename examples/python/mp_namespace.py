# Manager().Namespace(): named attributes held by the manager's server process.
from multiprocessing import Process, Manager


def f(ns):
    ns.x += 1
    ns.y = 'changed'


if __name__ == '__main__':
    with Manager() as manager:
        ns = manager.Namespace()
        ns.x = 1
        ns.y = 'one'
        p = Process(target=f, args=(ns,))
        p.start()
        p.join()
        print(ns)
        print(ns.x, ns.y)
