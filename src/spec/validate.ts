/** Validation of config.json: every problem is reported with the JSON path of the field. */
import { SpecError } from '../errors.js';
import { CAPABILITIES, NAMESPACES, RLIMITS, PROPAGATION_OPTIONS } from '../linux/tables.js';
import type { Spec } from './types.js';
import { validateResources } from '../cgroups/resources.js';

type Json = unknown;

const isObj = (v: Json): v is Record<string, Json> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isInt = (v: Json): v is number => typeof v === 'number' && Number.isInteger(v);

function obj(v: Json, path: string, required: boolean): Record<string, Json> | undefined {
  if (v === undefined || v === null) {
    if (required) throw new SpecError(path, 'is required');
    return undefined;
  }
  if (!isObj(v)) throw new SpecError(path, 'must be an object');
  return v;
}

function str(v: Json, path: string, required = false): string | undefined {
  if (v === undefined) {
    if (required) throw new SpecError(path, 'is required');
    return undefined;
  }
  if (typeof v !== 'string') throw new SpecError(path, 'must be a string');
  return v;
}

function absPath(v: Json, path: string, required = false): string | undefined {
  const s = str(v, path, required);
  if (s !== undefined && !s.startsWith('/')) throw new SpecError(path, `must be an absolute path, got "${s}"`);
  return s;
}

function uint(v: Json, path: string, required = false, max = 2 ** 32 - 1): number | undefined {
  if (v === undefined) {
    if (required) throw new SpecError(path, 'is required');
    return undefined;
  }
  if (!isInt(v) || v < 0 || v > max) throw new SpecError(path, `must be an integer from 0 to ${max}`);
  return v;
}

function bool(v: Json, path: string): void {
  if (v !== undefined && typeof v !== 'boolean') throw new SpecError(path, 'must be true or false');
}

function arr(v: Json, path: string): Json[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw new SpecError(path, 'must be an array');
  return v;
}

function strArr(v: Json, path: string): string[] | undefined {
  const a = arr(v, path);
  a?.forEach((x, i) => str(x, `${path}[${i}]`, true));
  return a as string[] | undefined;
}

function idMappings(v: Json, path: string): void {
  arr(v, path)?.forEach((m, i) => {
    const p = `${path}[${i}]`;
    const o = obj(m, p, true)!;
    uint(o.containerID, `${p}.containerID`, true);
    uint(o.hostID, `${p}.hostID`, true);
    const size = uint(o.size, `${p}.size`, true)!;
    if (size === 0) throw new SpecError(`${p}.size`, 'must be at least 1');
  });
}

function capList(v: Json, path: string): void {
  strArr(v, path)?.forEach((c, i) => {
    if (!(CAPABILITIES as readonly string[]).includes(c)) throw new SpecError(`${path}[${i}]`, `unknown capability "${c}"`);
  });
}

function hooks(v: Json): void {
  const h = obj(v, 'hooks', false);
  if (!h) return;
  const known = ['prestart', 'createRuntime', 'createContainer', 'startContainer', 'poststart', 'poststop'];
  for (const [name, list] of Object.entries(h)) {
    if (!known.includes(name)) throw new SpecError(`hooks.${name}`, `unknown hook kind (one of ${known.join(', ')})`);
    arr(list, `hooks.${name}`)?.forEach((hk, i) => {
      const p = `hooks.${name}[${i}]`;
      const o = obj(hk, p, true)!;
      absPath(o.path, `${p}.path`, true);
      strArr(o.args, `${p}.args`);
      strArr(o.env, `${p}.env`);
      if (o.timeout !== undefined && (!isInt(o.timeout) || o.timeout <= 0))
        throw new SpecError(`${p}.timeout`, 'must be a positive integer (seconds)');
    });
  }
}

function process(v: Json): void {
  const p = obj(v, 'process', true)!;
  bool(p.terminal, 'process.terminal');
  const args = p.args;
  if (!Array.isArray(args) || args.length === 0) throw new SpecError('process.args', 'must be a non-empty array');
  strArr(args, 'process.args');
  if ((args[0] as string) === '') throw new SpecError('process.args[0]', 'must not be empty');
  strArr(p.env, 'process.env')?.forEach((e, i) => {
    if (!e.includes('=')) throw new SpecError(`process.env[${i}]`, `must be KEY=VALUE, got "${e}"`);
  });
  absPath(p.cwd, 'process.cwd', true);
  const u = obj(p.user, 'process.user', true)!;
  uint(u.uid, 'process.user.uid', true);
  uint(u.gid, 'process.user.gid', true);
  uint(u.umask, 'process.user.umask', false, 0o777);
  arr(u.additionalGids, 'process.user.additionalGids')?.forEach((g, i) => uint(g, `process.user.additionalGids[${i}]`, true));
  const caps = obj(p.capabilities, 'process.capabilities', false);
  if (caps) {
    for (const [set, list] of Object.entries(caps)) {
      if (!['bounding', 'effective', 'inheritable', 'permitted', 'ambient'].includes(set))
        throw new SpecError(`process.capabilities.${set}`, 'unknown capability set');
      capList(list, `process.capabilities.${set}`);
    }
  }
  const seen = new Set<string>();
  arr(p.rlimits, 'process.rlimits')?.forEach((r, i) => {
    const rp = `process.rlimits[${i}]`;
    const o = obj(r, rp, true)!;
    const t = str(o.type, `${rp}.type`, true)!;
    if (!(t in RLIMITS)) throw new SpecError(`${rp}.type`, `unknown rlimit "${t}"`);
    if (seen.has(t)) throw new SpecError(`${rp}.type`, `duplicate rlimit "${t}"`);
    seen.add(t);
    const max = Number.MAX_SAFE_INTEGER;
    const soft = uint(o.soft, `${rp}.soft`, true, max)!;
    const hard = uint(o.hard, `${rp}.hard`, true, max)!;
    if (soft > hard) throw new SpecError(rp, `soft limit ${soft} is above hard limit ${hard}`);
  });
  bool(p.noNewPrivileges, 'process.noNewPrivileges');
  if (p.oomScoreAdj !== undefined && (!isInt(p.oomScoreAdj) || p.oomScoreAdj < -1000 || p.oomScoreAdj > 1000))
    throw new SpecError('process.oomScoreAdj', 'must be an integer from -1000 to 1000');
}

function mounts(v: Json): void {
  arr(v, 'mounts')?.forEach((m, i) => {
    const p = `mounts[${i}]`;
    const o = obj(m, p, true)!;
    absPath(o.destination, `${p}.destination`, true);
    str(o.source, `${p}.source`);
    str(o.type, `${p}.type`);
    strArr(o.options, `${p}.options`);
    idMappings(o.uidMappings, `${p}.uidMappings`);
    idMappings(o.gidMappings, `${p}.gidMappings`);
    const opts = (o.options as string[] | undefined) ?? [];
    const isBind = opts.includes('bind') || opts.includes('rbind') || o.type === 'bind';
    if (isBind && (o.source === undefined || o.source === '')) throw new SpecError(`${p}.source`, 'is required for a bind mount');
    if (!isBind && (o.type === undefined || o.type === '') && o.source === undefined)
      throw new SpecError(`${p}.type`, 'is required (or use a bind mount)');
    for (const [j, opt] of opts.entries()) {
      if (opt.startsWith('r') && ['rro', 'rrw', 'rnosuid', 'rsuid', 'rnodev', 'rdev', 'rnoexec', 'rexec'].includes(opt))
        throw new SpecError(`${p}.options[${j}]`, `recursive mount attribute "${opt}" is not supported yet`);
      if (opt === 'idmap' || opt === 'ridmap') throw new SpecError(`${p}.options[${j}]`, 'idmapped mounts are not supported yet');
    }
  });
}

function linux(v: Json): void {
  const l = obj(v, 'linux', false);
  if (!l) return;
  const types = new Set<string>();
  arr(l.namespaces, 'linux.namespaces')?.forEach((n, i) => {
    const p = `linux.namespaces[${i}]`;
    const o = obj(n, p, true)!;
    const t = str(o.type, `${p}.type`, true)!;
    if (!(t in NAMESPACES)) throw new SpecError(`${p}.type`, `unknown namespace type "${t}" (one of ${Object.keys(NAMESPACES).join(', ')})`);
    if (types.has(t)) throw new SpecError(`${p}.type`, `namespace "${t}" appears twice`);
    types.add(t);
    absPath(o.path, `${p}.path`);
  });
  idMappings(l.uidMappings, 'linux.uidMappings');
  idMappings(l.gidMappings, 'linux.gidMappings');
  if ((l.uidMappings || l.gidMappings) && !types.has('user'))
    throw new SpecError('linux.uidMappings', 'id mappings need a user namespace in linux.namespaces');
  const to = obj(l.timeOffsets, 'linux.timeOffsets', false);
  if (to) {
    if (!types.has('time')) throw new SpecError('linux.timeOffsets', 'time offsets need a time namespace in linux.namespaces');
    for (const [clock, off] of Object.entries(to)) {
      if (clock !== 'monotonic' && clock !== 'boottime') throw new SpecError(`linux.timeOffsets.${clock}`, 'must be monotonic or boottime');
      const o = obj(off, `linux.timeOffsets.${clock}`, true)!;
      if (o.secs !== undefined && !isInt(o.secs)) throw new SpecError(`linux.timeOffsets.${clock}.secs`, 'must be an integer');
      uint(o.nanosecs, `linux.timeOffsets.${clock}.nanosecs`, false, 999999999);
    }
  }
  arr(l.devices, 'linux.devices')?.forEach((d, i) => {
    const p = `linux.devices[${i}]`;
    const o = obj(d, p, true)!;
    const t = str(o.type, `${p}.type`, true)!;
    if (!['c', 'b', 'u', 'p'].includes(t)) throw new SpecError(`${p}.type`, `must be c, b, u or p, got "${t}"`);
    absPath(o.path, `${p}.path`, true);
    if (t !== 'p') {
      uint(o.major, `${p}.major`, true);
      uint(o.minor, `${p}.minor`, true);
    }
    uint(o.fileMode, `${p}.fileMode`, false, 0o7777);
    uint(o.uid, `${p}.uid`);
    uint(o.gid, `${p}.gid`);
  });
  const cg = str(l.cgroupsPath, 'linux.cgroupsPath');
  if (cg !== undefined && cg.split('/').includes('..')) throw new SpecError('linux.cgroupsPath', `must not contain "..", got "${cg}"`);
  const prop = str(l.rootfsPropagation, 'linux.rootfsPropagation');
  if (prop !== undefined && prop !== '' && !(prop in PROPAGATION_OPTIONS))
    throw new SpecError('linux.rootfsPropagation', `unknown propagation "${prop}"`);
  const sysctl = obj(l.sysctl, 'linux.sysctl', false);
  if (sysctl)
    for (const [k, val] of Object.entries(sysctl)) {
      if (!/^[A-Za-z0-9_.\-/]+$/.test(k) || k.split(/[./]/).includes('..') || k.startsWith('.'))
        throw new SpecError(`linux.sysctl["${k}"]`, 'is not a valid sysctl name');
      str(val, `linux.sysctl["${k}"]`, true);
    }
  strArr(l.maskedPaths, 'linux.maskedPaths')?.forEach((m, i) => absPath(m, `linux.maskedPaths[${i}]`));
  strArr(l.readonlyPaths, 'linux.readonlyPaths')?.forEach((m, i) => absPath(m, `linux.readonlyPaths[${i}]`));
  validateResources(l.resources);
}

/** Checks a parsed config.json; returns it typed or throws SpecError naming the field. */
export function validateSpec(v: Json): Spec {
  const s = obj(v, '(config.json)', true)!;
  const ver = str(s.ociVersion, 'ociVersion', true)!;
  if (!/^1\.\d+\.\d+/.test(ver)) throw new SpecError('ociVersion', `unsupported version "${ver}" (tsrunc supports 1.x)`);
  const root = obj(s.root, 'root', true)!;
  const rp = str(root.path, 'root.path', true)!;
  if (rp === '') throw new SpecError('root.path', 'must not be empty');
  bool(root.readonly, 'root.readonly');
  process(s.process);
  str(s.hostname, 'hostname');
  str(s.domainname, 'domainname');
  mounts(s.mounts);
  hooks(s.hooks);
  const ann = obj(s.annotations, 'annotations', false);
  if (ann) for (const [k, val] of Object.entries(ann)) str(val, `annotations["${k}"]`, true);
  linux(s.linux);
  const spec = s as unknown as Spec;
  const nsTypes = new Set((spec.linux?.namespaces ?? []).map((n) => n.type));
  // without its own uts namespace, setting these would rename the host
  if (spec.hostname !== undefined && !nsTypes.has('uts')) throw new SpecError('hostname', 'needs a new uts namespace in linux.namespaces');
  if (spec.domainname !== undefined && !nsTypes.has('uts')) throw new SpecError('domainname', 'needs a new uts namespace in linux.namespaces');
  return spec;
}

/** Checks a process object on its own (exec's --process file); paths are named process.*. */
export function validateProcess(v: Json): import('./types.js').Process {
  process(v);
  return v as import('./types.js').Process;
}
