#!/usr/bin/env python3
"""Byte-counting TCP proxy for the peer benchmark (tests/benches/couch.sh).

    tcpcount.py LISTEN_PORT TARGET_PORT OUT_FILE

Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT and counts the TCP payload bytes
(HTTP headers and bodies; not TCP/IP headers) in each direction. Writes "UP DOWN CONNECTIONS"
to OUT_FILE (UP: client -> target, DOWN: target -> client) every 0.5 s and once more on
SIGTERM/SIGINT, then exits. Bytes are counted before they are forwarded, so once the client
has seen a response, the totals already include it.
"""
import os
import signal
import socket
import sys
import threading
import time

listen_port, target_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
file_lock = threading.Lock()  # held through a write; the final write keeps it until exit
totals = [0, 0, 0]  # up, down, connections


def write_totals():
    with lock:
        line = f"{totals[0]} {totals[1]} {totals[2]}\n"
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(line)
    os.replace(tmp, out)


def tick():
    with file_lock:
        write_totals()


def pump(src, dst, i):
    try:
        while True:
            data = src.recv(256 * 1024)
            if not data:
                break
            with lock:
                totals[i] += len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def serve(client):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with lock:
        totals[2] += 1
    t = threading.Thread(target=pump, args=(upstream, client, 1), daemon=True)
    t.start()
    pump(client, upstream, 0)
    t.join()
    client.close()
    upstream.close()


def ticker():
    while True:
        time.sleep(0.5)
        tick()


def stop(_sig, _frame):
    file_lock.acquire(timeout=2)
    write_totals()
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen_port))
srv.listen(128)
tick()
threading.Thread(target=ticker, daemon=True).start()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
