# Pool.map_async: start the map, do something else, then get the results.
from multiprocessing import Pool


def f(x):
    return x * x


if __name__ == '__main__':
    with Pool(4) as pool:
        result = pool.map_async(f, range(10))
        print('submitted 10 jobs')
        print(result.get(timeout=10))
        print('successful:', result.successful())
