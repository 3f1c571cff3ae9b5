#!/usr/bin/python3
"""Generate through both services from an independent gRPC stack (Python grpcio).

Generates Python stubs from proto/ into --out_dir, starts pdserve-prefill and
pdserve-decode on ephemeral loopback ports (reading their port files), and
checks that a greedy Generate of "Once upon a time" on stories260K streams the
continuation the model's README gives, ending with finish_reason LENGTH.
Exit status 0 on success; on failure the services' stderr tails are printed.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

EXPECTED = "there was a little girl named Lily"


def generate_stubs(args):
    if os.path.isdir(args.out_dir):
        shutil.rmtree(args.out_dir)
    os.makedirs(args.out_dir)
    protos = [os.path.join(args.proto_dir, "pdserve", "v1", name)
              for name in ("common.proto", "generate.proto", "prefill.proto")]
    if args.protoc:
        command = [args.protoc, "-I" + args.proto_dir, "--python_out=" + args.out_dir,
                   "--grpc_out=" + args.out_dir,
                   "--plugin=protoc-gen-grpc=" + args.grpc_python_plugin] + protos
    else:
        command = [sys.executable, "-m", "grpc_tools.protoc", "-I" + args.proto_dir,
                   "--python_out=" + args.out_dir, "--grpc_python_out=" + args.out_dir] + protos
    subprocess.run(command, check=True)
    sys.path.insert(0, args.out_dir)


class Service:
    """One service binary on 127.0.0.1:0; its port comes from its port file."""

    def __init__(self, name, argv, workdir, timeout_s=60.0):
        self.name = name
        self.port_file = os.path.join(workdir, name + ".port")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            argv + ["--listen", "127.0.0.1:0", "--port_file", self.port_file],
            stdout=subprocess.DEVNULL, stderr=self.stderr)
        try:
            self._wait_for_port(timeout_s)
        except Exception:
            self.process.kill()
            self.process.wait()
            raise
        self.address = "127.0.0.1:%d" % self.port

    def _wait_for_port(self, timeout_s):
        name = self.name
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(self.port_file):
            if self.process.poll() is not None:
                raise RuntimeError("%s exited with %s before listening:\n%s"
                                   % (name, self.process.returncode, self.stderr_tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("%s wrote no port file within %.0f s:\n%s"
                                   % (name, timeout_s, self.stderr_tail()))
            time.sleep(0.02)
        with open(self.port_file) as f:
            self.port = int(f.read().strip())

    def stderr_tail(self, limit=4000):
        if not self.stderr.closed:
            self.stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read()[-limit:].decode("utf-8", "replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()
        return self.process.returncode


def check_generate(address):
    import grpc
    from pdserve.v1 import generate_pb2, generate_pb2_grpc

    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = generate_pb2_grpc.GenerateServiceStub(channel)
    request = generate_pb2.GenerateRequest(
        prompt="Once upon a time",
        sampling=generate_pb2.SamplingParams(temperature=0.0),
        stopping=generate_pb2.StoppingCriteria(max_new_tokens=16))
    text = []
    last = None
    count = 0
    # wait_for_ready: the decode service may still be checking its prefill target.
    for response in stub.Generate(request, timeout=120, wait_for_ready=True):
        if response.index != count:
            raise AssertionError("response %d has index %d" % (count, response.index))
        text.append(response.text)
        last = response
        count += 1
    text = "".join(text)
    print("generated: %r" % text)
    if EXPECTED not in text:
        raise AssertionError("expected %r in the greedy continuation, got %r" % (EXPECTED, text))
    if count != 16:
        raise AssertionError("expected 16 responses, got %d" % count)
    if last.finish_reason != generate_pb2.FINISH_REASON_LENGTH:
        raise AssertionError("finish_reason %s, expected FINISH_REASON_LENGTH"
                             % generate_pb2.FinishReason.Name(last.finish_reason))
    if last.usage.prompt_tokens != 5 or last.usage.generated_tokens != 16:
        raise AssertionError("usage %s, expected prompt 5 / generated 16" % last.usage)

    # A bad request comes back as INVALID_ARGUMENT through this stack too.
    try:
        for _ in stub.Generate(generate_pb2.GenerateRequest(prompt=""), timeout=30):
            pass
        raise AssertionError("an empty prompt was accepted")
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise AssertionError("empty prompt: %s %s, expected INVALID_ARGUMENT"
                                 % (error.code(), error.details()))
    channel.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefill_bin", required=True)
    parser.add_argument("--decode_bin", required=True)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--out_dir", required=True, help="where the Python stubs are generated")
    parser.add_argument("--protoc", default="",
                        help="protoc to use with --grpc_python_plugin (default: grpc_tools.protoc)")
    parser.add_argument("--grpc_python_plugin", default="")
    args = parser.parse_args()

    generate_stubs(args)
    workdir = tempfile.mkdtemp(prefix="pdserve-python-e2e-")
    services = []
    ok = False
    try:
        prefill = Service("prefill", [args.prefill_bin, "--model_dir", args.model_dir,
                                      "--device", "cpu"], workdir)
        services.append(prefill)
        decode = Service("decode", [args.decode_bin, "--model_dir", args.model_dir,
                                    "--device", "cpu", "--prefill_target", prefill.address],
                         workdir)
        services.append(decode)
        check_generate(decode.address)
        ok = True
    finally:
        for service in reversed(services):
            code = service.stop()
            if code != 0:
                ok = False
                print("%s exited with %s after SIGTERM" % (service.name, code))
            if not ok:
                print("---- %s stderr tail ----\n%s" % (service.name, service.stderr_tail()))
        shutil.rmtree(workdir, ignore_errors=True)
    print("python_client_e2e: OK" if ok else "python_client_e2e: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
